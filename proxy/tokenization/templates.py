"""Chat formats without a shipped template (Llama 3, older Qwen names), as special tokens and text.

Qwen2.5, Qwen3 and DeepSeek-V3 are rendered by their official templates
(``proxy.tokenization.chat_templates``). Llama 3's template is under Meta's license, so it is
not shipped and is rendered here; so are Qwen names without a shipped template (Qwen2, QwQ,
hosted qwen-* models, Qwen3-Coder) in Qwen's ChatML. A server tokenizer splits a prompt at
special tokens and encodes each text run on its own, so a count is the number of special
tokens plus the tokens of each text run, which is what ``render`` returns. Plain chats
(system, user, assistant text) follow the formats exactly: Qwen2's ChatML and Meta's
``llama_models.llama3.chat_format`` (``<|begin_of_text|>``,
``<|start_header_id|>role<|end_header_id|>\\n\\n`` + stripped content + ``<|eot_id|>``).
Tool definitions and calls are rendered approximately (as JSON), images and other parts are
left to the caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message reduced to what the templates use."""

    role: str
    text: str
    tool_calls: tuple[tuple[str, str], ...] = ()  # (name, arguments JSON)


@dataclass(slots=True)
class Rendered:
    """A rendered prompt: how many special tokens, and the text runs between them."""

    specials: int = 0
    texts: list[str] = field(default_factory=list)

    def special(self, count: int = 1) -> None:
        self.specials += count

    def text(self, text: str) -> None:
        if text:
            self.texts.append(text)


def render(
    family: Literal["qwen", "llama3"],
    messages: Sequence[ChatMessage],
    tools: Sequence[Mapping[str, Any]],
    default_system: str | None = None,
) -> Rendered:
    """The prompt a chat becomes under ``family``'s template, with the reply primed."""
    out = Rendered()
    if family == "qwen":
        _qwen(out, messages, tools, default_system)
    else:
        _llama3(out, messages, tools)
    return out


def _tools_json(tools: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(json.dumps({"type": "function", "function": dict(t)}) for t in tools)


def _calls_json(calls: Sequence[tuple[str, str]]) -> list[str]:
    return [f'{{"name": {json.dumps(name)}, "arguments": {args}}}' for name, args in calls]


def _qwen(
    out: Rendered,
    messages: Sequence[ChatMessage],
    tools: Sequence[Mapping[str, Any]],
    default_system: str | None,
) -> None:
    # <|im_start|>role\n content <|im_end|>\n ... <|im_start|>assistant\n
    rest = list(messages)
    system = rest.pop(0).text if rest and rest[0].role in ("system", "developer") else None
    if system is None:
        system = default_system
    if tools:
        system = (system or "") + "\n\n# Tools\n\n<tools>\n" + _tools_json(tools) + "\n</tools>"
    if system is not None:
        _chatml(out, "system", system)
    for message in rest:
        text = message.text
        if message.tool_calls:
            calls = _calls_json(message.tool_calls)
            out.special()
            out.text("assistant" + (f"\n{text}" if text else "") + "\n")
            for index, call in enumerate(calls):
                out.special(2)  # <tool_call> ... </tool_call>
                out.text(f"\n{call}\n" + ("\n" if index < len(calls) - 1 else ""))
            out.special()
            out.text("\n")
        elif message.role == "tool":
            _chatml(out, "user", f"<tool_response>\n{text}\n</tool_response>")
        else:
            _chatml(out, "system" if message.role == "developer" else message.role, text)
    out.special()
    out.text("assistant\n")


def _chatml(out: Rendered, role: str, text: str) -> None:
    out.special()
    out.text(f"{role}\n{text}")
    out.special()
    out.text("\n")


def _llama3(
    out: Rendered, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]]
) -> None:
    out.special()  # <|begin_of_text|>
    if tools:
        _llama3_message(out, "system", _tools_json(tools))
    for message in messages:
        role = {"developer": "system", "tool": "ipython"}.get(message.role, message.role)
        text = message.text
        if message.tool_calls:
            text = "\n".join([text, *_calls_json(message.tool_calls)]).strip()
        _llama3_message(out, role, text)
    out.special()
    out.text("assistant")
    out.special()
    out.text("\n\n")


def _llama3_message(out: Rendered, role: str, text: str) -> None:
    out.special()  # <|start_header_id|>
    out.text(role)
    out.special()  # <|end_header_id|>
    out.text("\n\n")
    out.text(text.strip())
    out.special()  # <|eot_id|>
