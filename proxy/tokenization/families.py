"""Model names to tokenizers and chat formats: configured rules first, then family defaults."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from proxy.config import TokenizerRule

# qwen2.5, qwen3 and deepseek are rendered by the models' official templates; qwen (Qwen2,
# QwQ, hosted qwen-* names, Qwen3-Coder) and llama3 by proxy.tokenization.templates.
ChatFamily = Literal["openai", "qwen", "qwen2.5", "qwen3", "llama3", "deepseek"]

O200K_BASE: Final = "o200k_base"
CL100K_BASE: Final = "cl100k_base"
P50K_BASE: Final = "p50k_base"

# Checked in order, so the gpt-4o / gpt-4.1 / gpt-4.5 prefixes win over plain "gpt-4".
_ENCODING_BY_PREFIX: Final[tuple[tuple[str, str], ...]] = (
    ("gpt-4o", O200K_BASE),
    ("chatgpt-4o", O200K_BASE),
    ("gpt-4.1", O200K_BASE),
    ("gpt-4.5", O200K_BASE),
    ("gpt-5", O200K_BASE),
    ("gpt-oss", O200K_BASE),
    ("o1", O200K_BASE),
    ("o3", O200K_BASE),
    ("o4", O200K_BASE),
    ("omni-moderation", O200K_BASE),
    ("gpt-4", CL100K_BASE),
    ("gpt-3.5-turbo", CL100K_BASE),
    ("gpt-35-turbo", CL100K_BASE),  # Azure's spelling of the same models
    ("text-embedding-3-", CL100K_BASE),
    ("text-davinci-002", P50K_BASE),
    ("text-davinci-003", P50K_BASE),
    ("code-davinci", P50K_BASE),
    ("code-cushman", P50K_BASE),
)
_ENCODING_BY_NAME: Final[tuple[tuple[str, str], ...]] = (
    ("text-embedding-ada-002", CL100K_BASE),
    ("davinci-002", CL100K_BASE),
    ("babbage-002", CL100K_BASE),
)
# Other vendors' families, searched anywhere in the name: distilled models keep the
# vocabulary of their base (DeepSeek-R1-Distill-Qwen is Qwen's), so those come first.
_FAMILY_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"qwen|qwq"), "qwen"),
    (re.compile(r"llama-?3"), "llama3"),
    (re.compile(r"deepseek"), "deepseek-v3"),
    (re.compile(r"claude"), "claude"),
)
_CHAT_FAMILY: Final[dict[str, ChatFamily]] = {
    "qwen": "qwen",
    "llama3": "llama3",
    "deepseek-v3": "deepseek",
}


@dataclass(frozen=True, slots=True)
class TokenizerChoice:
    """Which tokenizer counts a model's text, and which chat format wraps its messages."""

    encoding: str | None
    file: str | None
    kind: Literal["tiktoken", "huggingface"] | None
    chat: ChatFamily


def base_name(model: str) -> str:
    """``openai/gpt-4o`` -> ``gpt-4o``; ``ft:gpt-4o-mini:org::id`` -> ``gpt-4o-mini``."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    return name.removeprefix("ft:").split(":", 1)[0]


def encoding_name_for_model(model: str) -> str:
    """The default tokenizer of a model, e.g. ``"o200k_base"`` for ``"gpt-4o-mini"``.

    Provider prefixes (``openai/gpt-4o``), fine-tune names (``ft:gpt-4o-mini:org::id``) and
    Ollama tags (``qwen2.5:7b``) are reduced to the base model. Qwen models give ``"qwen"``,
    Llama 3.x ``"llama3"``, DeepSeek ``"deepseek-v3"``, Claude ``"claude"`` (a stand-in).
    Unknown models fall back to ``o200k_base``: an estimate from the newest OpenAI vocabulary
    is closer than none.
    """
    name = base_name(model)
    for exact, encoding in _ENCODING_BY_NAME:
        if name == exact:
            return encoding
    for prefix, encoding in _ENCODING_BY_PREFIX:
        if name.startswith(prefix):
            return encoding
    for pattern, family in _FAMILY_PATTERNS:
        if pattern.search(name):
            return family
    return O200K_BASE


def choose(model: str, rules: Sequence[TokenizerRule]) -> TokenizerChoice:
    """The first rule whose ``model`` (exact or glob, any case) matches, else the default.

    The chat format follows the model's family by name, else the rule's encoding, else
    OpenAI's.
    """
    default = encoding_name_for_model(model)
    chat = _chat_family(default, model)
    lowered = model.strip().lower()
    for rule in rules:
        if fnmatch.fnmatchcase(lowered, rule.model.lower()):
            if chat == "openai" and rule.encoding is not None:
                chat = _CHAT_FAMILY.get(rule.encoding, "openai")
            return TokenizerChoice(rule.encoding, rule.file, rule.kind, chat)
    return TokenizerChoice(default, None, None, chat)


def _chat_family(encoding: str, model: str) -> ChatFamily:
    chat = _CHAT_FAMILY.get(encoding, "openai")
    if chat != "qwen":
        return chat
    name = base_name(model)
    if "qwen3" in name:
        return "qwen" if "coder" in name else "qwen3"  # Qwen3-Coder's template is its own
    if "qwen2.5" in name:
        return "qwen2.5"
    return "qwen"


def qwen_default_system(model: str) -> str | None:
    """The system prompt Qwen2 / Qwen2.5 chat templates insert when a chat has none."""
    name = base_name(model)
    if "qwen2.5" in name:
        return "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    if re.search(r"qwen2(?![.\d])", name):
        return "You are a helpful assistant."
    return None
