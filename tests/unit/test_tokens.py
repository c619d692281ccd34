"""Token counting: encodings, text counts, and prompt estimates against API-reported numbers."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import socket
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from tiktoken_ext import openai_public

from proxy import tokens
from proxy.config import TokenizerRule
from proxy.tokenization import loading
from proxy.tokens import PromptEstimate, TokenCounter, encoding_name_for_model

PAYLOADS = Path(__file__).parent.parent / "payloads" / "tokens"
ENCODINGS = ("o200k_base", "cl100k_base", "p50k_base")
CHAT = "/v1/chat/completions"


def load(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text(encoding="utf-8"))


TEXT_SAMPLES = load("text_samples.json")["samples"]
COOKBOOK = load("chat_cookbook.json")["cases"]
HMARR = load("chat_functions_hmarr.json")


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def refuse_network(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"network access attempted: {args!r}")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_network)
    monkeypatch.setattr(socket, "create_connection", refuse_network)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_network)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tiktoken.Encoding]:
    """tiktoken's own encodings, loaded by tiktoken's loader from a cache seeded with our files."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    vocab = Path(tokens.__file__).parent / "vocab"
    for name in ENCODINGS:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        shutil.copy(vocab / f"{name}.tiktoken", cache / hashlib.sha1(url.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        patch.setattr(socket.socket, "connect", refuse_network)
        return {
            name: tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())
            for name in ENCODINGS
        }


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("omni-moderation-latest", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("davinci-002", "cl100k_base"),
        ("babbage-002", "cl100k_base"),
        ("text-davinci-002", "p50k_base"),
        ("text-davinci-003", "p50k_base"),
        ("code-davinci-002", "p50k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("openai/gpt-3.5-turbo", "cl100k_base"),
        ("ft:gpt-4o-mini-2024-07-18:my-org::abc123", "o200k_base"),
        ("ft:gpt-3.5-turbo-0125:my-org:custom:id", "cl100k_base"),
        ("ft:davinci-002:my-org::id", "cl100k_base"),
        ("  GPT-4O  ", "o200k_base"),
        ("llama3.1:8b", "llama3"),
        ("meta-llama/Llama-3.3-70B-Instruct", "llama3"),
        ("claude-3-5-sonnet-latest", "claude"),
        ("qwen2.5:7b", "qwen"),
        ("Qwen/Qwen3-235B-A22B", "qwen"),
        ("qwq-32b", "qwen"),
        ("deepseek-chat", "deepseek-v3"),
        ("deepseek-ai/DeepSeek-R1", "deepseek-v3"),
        ("DeepSeek-R1-Distill-Qwen-7B", "qwen"),
        ("mistral-large-latest", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_encoding_name_for_model(model: str, encoding: str) -> None:
    assert encoding_name_for_model(model) == encoding


@pytest.mark.parametrize("sample", TEXT_SAMPLES, ids=[s["id"] for s in TEXT_SAMPLES])
@pytest.mark.parametrize(
    ("model", "encoding"),
    [("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base"), ("text-davinci-003", "p50k_base")],
)
def test_count_text(counter: TokenCounter, sample: Any, model: str, encoding: str) -> None:
    assert counter.count_text(model, sample["text"]) == sample["tokens"][encoding]
    assert counter.completion_tokens(model, sample["text"]) == sample["tokens"][encoding]
    if encoding in sample.get("published", {}):
        assert sample["tokens"][encoding] == sample["published"][encoding]


@pytest.mark.parametrize("sample", TEXT_SAMPLES, ids=[s["id"] for s in TEXT_SAMPLES])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encoding_matches_tiktoken_reference(
    counter: TokenCounter, reference: dict[str, tiktoken.Encoding], sample: Any, encoding: str
) -> None:
    text = sample["text"]
    ours = counter.tokenizer(encoding)
    assert ours.encode(text) == reference[encoding].encode_ordinary(text)
    assert len(reference[encoding].encode_ordinary(text)) == sample["tokens"][encoding]


@pytest.mark.parametrize(
    ("encoding", "text", "ids"),
    [
        ("o200k_base", "hello world", [24912, 2375]),
        ("cl100k_base", "hello world", [15339, 1917]),
        ("p50k_base", "hello world", [31373, 995]),
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        (
            "o200k_base",
            " 日本語とEnglish 12345!\n",
            [17428, 40909, 5330, 28881, 220, 7633, 2548, 4175],
        ),
        ("o200k_base", "<|endoftext|>", [27, 91, 419, 1440, 919, 91, 29]),
    ],
)
def test_published_token_ids(
    counter: TokenCounter, encoding: str, text: str, ids: list[int]
) -> None:
    assert counter.tokenizer(encoding).encode(text) == ids


def test_loading_touches_no_network_no_disk_no_environment(
    no_network: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    environ = dict(os.environ)
    fresh = TokenCounter()
    for model in ("gpt-4o", "gpt-4", "text-davinci-003"):
        assert fresh.count_text(model, "hello world") == 2
    assert not cache.exists()
    assert dict(os.environ) == environ


def test_special_tokens_are_text(
    counter: TokenCounter, reference: dict[str, tiktoken.Encoding]
) -> None:
    text = "<|endoftext|><|endofprompt|><|fim_prefix|>"
    assert counter.count_text("gpt-4o", text) == len(reference["o200k_base"].encode_ordinary(text))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    assert counter.prompt_tokens(CHAT, body) == 3 + 1 + counter.count_text("gpt-4o", text) + 3


def test_vocabulary_hash_mismatch_is_refused() -> None:
    with pytest.raises(tokens.VocabularyError, match="sha256"):
        loading.read_vendored_ranks(
            "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken", "0" * 64
        )


@pytest.mark.parametrize("name", ["o200k_base", "qwen", "deepseek-v3"])
def test_a_loaded_tokenizer_keeps_no_python_copy_of_its_vocabulary(name: str) -> None:
    """The ranks live in the Rust encoder; a Python dict of them would cost ~28 MB a worker."""
    tracemalloc.start()
    try:
        tokenizer = loading.load_builtin(name)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 1024 * 1024
    assert tokenizer.count("hello world") == 2


def test_preload_default_loads_what_unknown_and_new_openai_models_use(
    tokenizer_loads: list[str],
) -> None:
    fresh = TokenCounter()
    assert fresh.preload_default().name == "o200k_base"
    fresh.count_text("gpt-4o-mini", "hello")
    fresh.count_text("some-unknown-model", "hello")
    assert tokenizer_loads == ["o200k_base"]


def test_preload_default_follows_a_rule_for_every_model() -> None:
    ruled = TokenCounter([TokenizerRule(model="*", encoding="cl100k_base")])
    assert ruled.preload_default().name == "cl100k_base"


def test_encodings_load_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    real = tokens.load_builtin

    def counting(name: str) -> tokens.Tokenizer:
        loads.append(name)
        time.sleep(0.05)  # widen the race window
        return real(name)

    monkeypatch.setattr(tokens, "load_builtin", counting)
    fresh = TokenCounter()
    results: list[int] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        results.append(fresh.count_text("gpt-3.5-turbo", "hello world"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [2] * 8
    assert loads == ["cl100k_base"]


@pytest.mark.parametrize("case", COOKBOOK, ids=[c["id"] for c in COOKBOOK])
def test_cookbook_chat_prompts(counter: TokenCounter, case: Any) -> None:
    assert counter.prompt_tokens(CHAT, case["body"]) == case["prompt_tokens"]


@pytest.mark.parametrize("case", HMARR["cases"], ids=[c["id"] for c in HMARR["cases"]])
def test_functions_prompts_reported_by_api(counter: TokenCounter, case: Any) -> None:
    body = {
        "model": HMARR["model"],
        "messages": case["messages"],
        "functions": case.get("functions"),
    }
    if "function_call" in case:
        body["function_call"] = case["function_call"]
    assert counter.prompt_tokens(CHAT, body) == case["tokens"]


@pytest.mark.parametrize(
    "case",
    [c for c in HMARR["cases"] if "functions" in c],
    ids=[c["id"] for c in HMARR["cases"] if "functions" in c],
)
def test_tools_count_like_functions(counter: TokenCounter, case: Any) -> None:
    functions = {
        "model": HMARR["model"],
        "messages": case["messages"],
        "functions": case["functions"],
    }
    tools = {
        "model": HMARR["model"],
        "messages": case["messages"],
        "tools": [{"type": "function", "function": f} for f in case["functions"]],
    }
    assert counter.prompt_tokens(CHAT, tools) == counter.prompt_tokens(CHAT, functions)


def user(content: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("content", "same_as", "excluded"),
    [
        ([{"type": "text", "text": "What is in this image?"}], "What is in this image?", ()),
        (
            [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
            "What is in this image?",
            ("image",),
        ),
        (
            [
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "text", "text": "Transcribe this."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "file", "file": {"file_id": "file-abc"}},
            ],
            "Transcribe this.",
            ("audio", "image", "file"),
        ),
        (
            [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
            "",
            ("image",),
        ),
    ],
    ids=["text-part", "text-and-image", "audio-image-file", "image-only"],
)
def test_content_parts(
    counter: TokenCounter, content: Any, same_as: str, excluded: tuple[str, ...]
) -> None:
    estimate = counter.prompt_estimate(CHAT, user(content))
    assert estimate == PromptEstimate(counter.prompt_tokens(CHAT, user(same_as)) or 0, excluded)
    assert counter.prompt_tokens(CHAT, user(content)) == estimate.tokens


def test_assistant_tool_calls_count_like_function_calls(counter: TokenCounter) -> None:
    arguments = '{"location": "Paris, France", "unit": "celsius"}'
    legacy = {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "get_current_weather", "arguments": arguments},
    }
    tool: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": arguments},
            }
        ],
    }
    one = counter.prompt_tokens(CHAT, {"model": "gpt-4o", "messages": [legacy]})
    assert one is not None
    assert one == counter.prompt_tokens(CHAT, {"model": "gpt-4o", "messages": [tool]})
    two_calls = dict(tool, tool_calls=tool["tool_calls"] * 2)
    call = (
        3
        + counter.count_text("gpt-4o", "get_current_weather")
        + counter.count_text("gpt-4o", arguments)
    )
    assert counter.prompt_tokens(CHAT, {"model": "gpt-4o", "messages": [two_calls]}) == one + call


def test_non_function_tools_are_excluded(counter: TokenCounter) -> None:
    body = user("hi") | {"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}
    estimate = counter.prompt_estimate(CHAT, body)
    assert estimate == PromptEstimate(counter.prompt_tokens(CHAT, user("hi")) or 0, ("tool",))


@pytest.mark.parametrize(
    ("model", "value", "expected"),
    [
        ("text-embedding-3-small", "hello world", 2),
        ("text-embedding-3-small", ["hello world", "tiktoken is great!"], 8),
        ("text-embedding-3-small", [15339, 1917, 0], 3),
        ("text-embedding-3-small", [[15339, 1917], [83, 1609, 5963]], 5),
        ("text-embedding-3-small", [], 0),
        ("text-embedding-ada-002", "antidisestablishmentarianism", 6),
    ],
    ids=["string", "strings", "token-array", "token-arrays", "empty", "ada"],
)
def test_embeddings_input_shapes(
    counter: TokenCounter, model: str, value: Any, expected: int
) -> None:
    estimate = counter.prompt_estimate("/v1/embeddings", {"model": model, "input": value})
    assert estimate == PromptEstimate(expected)


@pytest.mark.parametrize(
    ("model", "prompt", "expected"),
    [
        ("gpt-3.5-turbo-instruct", "2 + 2 = 4", 7),
        ("text-davinci-003", "2 + 2 = 4", 5),
        ("text-davinci-003", ["お誕生日おめでとう", "antidisestablishmentarianism"], 19),
        ("davinci-002", [[1, 2, 3], [4]], 4),
        ("davinci-002", [1, 2, 3], 3),
    ],
)
def test_completions_prompt_shapes(
    counter: TokenCounter, model: str, prompt: Any, expected: int
) -> None:
    assert counter.prompt_tokens("/v1/completions", {"model": model, "prompt": prompt}) == expected


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/v1/images/generations", {"model": "dall-e-3", "prompt": "a cat"}),
        ("/v1/models", {}),
        ("/v1/audio/transcriptions", {"model": "whisper-1"}),
        (CHAT, {"model": "gpt-4o"}),
        (CHAT, {"model": "gpt-4o", "messages": "hello"}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": {"text": "x"}}),
        ("/v1/completions", {"model": "davinci-002"}),
        ("/v1/responses", {"model": "gpt-4o"}),
    ],
)
def test_endpoints_and_bodies_it_cannot_estimate(
    counter: TokenCounter, endpoint: str, body: dict[str, Any]
) -> None:
    assert counter.prompt_estimate(endpoint, body) is None
    assert counter.prompt_tokens(endpoint, body) is None


@pytest.mark.parametrize(
    "endpoint",
    [
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/chat/completions/",
        "/v1/chat/completions?x=1",
    ],
)
def test_endpoint_spellings(counter: TokenCounter, endpoint: str) -> None:
    assert counter.prompt_tokens(endpoint, user("hello")) == 8


def chat_equivalent(counter: TokenCounter, messages: list[dict[str, Any]]) -> int:
    return counter.prompt_tokens(CHAT, {"model": "gpt-4o", "messages": messages}) or 0


@pytest.mark.parametrize(
    ("body", "messages", "excluded"),
    [
        ({"input": "Tell me a joke."}, [{"role": "user", "content": "Tell me a joke."}], ()),
        (
            {"instructions": "Talk like a pirate.", "input": "Are semicolons optional?"},
            [
                {"role": "system", "content": "Talk like a pirate."},
                {"role": "user", "content": "Are semicolons optional?"},
            ],
            (),
        ),
        (
            {
                "input": [
                    {"role": "developer", "content": "Be brief."},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "What is in this image?"},
                            {"type": "input_image", "image_url": "https://example.com/cat.png"},
                        ],
                    },
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "A cat."}],
                    },
                ]
            },
            [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "What is in this image?"},
                {"role": "assistant", "content": "A cat."},
            ],
            ("image",),
        ),
        (
            {"input": "And now?", "previous_response_id": "resp_123"},
            [{"role": "user", "content": "And now?"}],
            ("previous_response",),
        ),
    ],
    ids=["input-string", "instructions", "message-items", "previous-response"],
)
def test_responses_counted_like_chat(
    counter: TokenCounter,
    body: dict[str, Any],
    messages: list[dict[str, Any]],
    excluded: tuple[str, ...],
) -> None:
    estimate = counter.prompt_estimate("/v1/responses", {"model": "gpt-4o", **body})
    assert estimate == PromptEstimate(chat_equivalent(counter, messages), excluded)


def test_responses_function_calls_and_tools(counter: TokenCounter) -> None:
    function = {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    }
    arguments = '{"location": "Paris"}'
    body = {
        "model": "gpt-4o",
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": function["name"],
                "arguments": arguments,
            },
            {"type": "function_call_output", "call_id": "c1", "output": '{"temp": 21}'},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ],
        "tools": [{"type": "function", **function}, {"type": "web_search"}],
    }
    chat = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": function["name"], "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "content": '{"temp": 21}'},
        ],
        "tools": [{"type": "function", "function": function}],
    }
    # Chat has an empty assistant message around the call; Responses has no system message.
    expected = (
        (counter.prompt_tokens(CHAT, chat) or 0) - 3 - counter.count_text("gpt-4o", "assistant")
    )
    assert counter.prompt_estimate("/v1/responses", body) == PromptEstimate(
        expected, ("reasoning", "tool")
    )


def mixed_text(size: int, seed: int) -> str:
    """Pseudo-random prose mixing scripts, digits, apostrophes, combining marks and whitespace."""
    rng = random.Random(seed)
    words = [
        "tally",
        "proxy",
        "don't",
        "It's",
        "naïve",
        "cafe\u0301",
        "Ünïcödé",
        "東京",
        "中文分词",
        "お誕生日",
        "Привет",
        "مرحبا",
        "12345",
        "3.14",
        "x=y+1;",
        "<|endoftext|>",
        "👋🌍",
        "HTTPServer",
        "snake_case",
        "\n\n",
        "\t",
        "   ",
    ]
    separators = [" ", " ", " ", ", ", ". ", "\n", "", "'"]
    parts: list[str] = []
    length = 0
    while length < size:
        part = rng.choice(words) + rng.choice(separators)
        parts.append(part)
        length += len(part)
    return "".join(parts)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_text_counts_exactly(
    counter: TokenCounter, reference: dict[str, tiktoken.Encoding], encoding: str, seed: int
) -> None:
    text = mixed_text(300_000, seed)
    model = {"o200k_base": "gpt-4o", "cl100k_base": "gpt-4", "p50k_base": "text-davinci-003"}
    assert counter.count_text(model[encoding], text) == len(
        reference[encoding].encode_ordinary(text)
    )


@pytest.mark.parametrize("sample_id", ["english-paragraph", "chinese-paragraph"])
def test_megabytes_count_exactly_and_fast(
    counter: TokenCounter, reference: dict[str, tiktoken.Encoding], sample_id: str
) -> None:
    sample = next(s for s in TEXT_SAMPLES if s["id"] == sample_id)
    text = "\n".join([sample["text"]] * (2_000_000 // len(sample["text"])))
    started = time.perf_counter()
    counted = counter.count_text("gpt-4o", text)
    elapsed = time.perf_counter() - started
    assert counted == len(reference["o200k_base"].encode_ordinary(text))
    assert elapsed < 5, f"{len(text)} characters took {elapsed:.1f}s"


@pytest.mark.parametrize(
    "text", [" " * 2_000_000, "\n" * 1_000_000, "a" * 1_000_000, "中" * 500_000]
)
def test_pathological_runs_neither_panic_nor_stall(counter: TokenCounter, text: str) -> None:
    # A single tiktoken call on 1M spaces panics inside its regex engine (not an Exception).
    started = time.perf_counter()
    counted = counter.count_text("gpt-4o", text)
    assert 0 < counted <= len(text)
    assert time.perf_counter() - started < 5
