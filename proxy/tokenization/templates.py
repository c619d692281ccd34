"""Chat templates of open-weight families, rendered as special tokens and text to count.

A server such as vLLM renders the model's own chat template and tokenizes the result; the
tokenizer splits it at special tokens and encodes each text run on its own. So a prompt's
count is the number of special tokens plus the tokens of each text run, which is what
``render`` returns. Plain chats (system, user, assistant text) follow the templates exactly:
Qwen2.5's ChatML ``tokenizer_config.json``, Meta's ``llama_models.llama3.chat_format``
(``<|begin_of_text|>``, ``<|start_header_id|>role<|end_header_id|>\\n\\n`` + stripped
content + ``<|eot_id|>``) and DeepSeek-V3's ``tokenizer_config.json``. Tool definitions and
calls are rendered approximately (as JSON), images and other parts are left to the caller.
DeepSeek's special tokens are spelled with fullwidth bars and U+2581 (``<|User|>``); the
comments below write them in ASCII.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.tokenization.families import ChatFamily


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
    family: ChatFamily,
    messages: Sequence[ChatMessage],
    tools: Sequence[Mapping[str, Any]],
    default_system: str | None = None,
) -> Rendered:
    """The prompt a chat becomes under ``family``'s template, with the reply primed."""
    out = Rendered()
    if family == "qwen":
        _qwen(out, messages, tools, default_system)
    elif family == "llama3":
        _llama3(out, messages, tools)
    else:
        _deepseek(out, messages, tools)
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


def _deepseek(
    out: Rendered, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]]
) -> None:
    # <|begin_of_sentence|>{systems joined by \n\n}<|User|>..<|Assistant|>..<|end_of_sentence|>
    systems = [m.text for m in messages if m.role in ("system", "developer")]
    if tools:
        systems.append(_tools_json(tools))
    out.special()
    out.text("\n\n".join(systems))
    in_tool_outputs = False
    for message in messages:
        if message.role == "tool":
            # <|tool_outputs_begin|> once, then <|tool_output_begin|>..<|tool_output_end|>
            out.special(2 if in_tool_outputs else 3)
            out.text(message.text)
            in_tool_outputs = True
            continue
        if message.role in ("user", "assistant"):
            # <|User|>, <|Assistant|>, or <|tool_outputs_end|> in its place
            out.special()
            if message.role == "user":
                out.text(message.text)
            else:
                _deepseek_assistant(out, message)
            in_tool_outputs = False
    out.special()  # <|Assistant|>, or <|tool_outputs_end|> after tool outputs


def _deepseek_assistant(out: Rendered, message: ChatMessage) -> None:
    # Earlier turns' reasoning is dropped by the template.
    out.text(message.text.split("</think>")[-1])
    for index, (name, arguments) in enumerate(message.tool_calls):
        if index:
            out.text("\n")
        # <|tool_calls_begin|> before the first; <|tool_call_begin|>function<|tool_sep|>
        out.special(1 if index else 2)
        out.text("function")
        out.special()
        out.text(f"{name}\n```json\n{arguments}\n```")
        out.special()  # <|tool_call_end|>
    if message.tool_calls:
        out.special()  # <|tool_calls_end|>
    out.special()  # <|end_of_sentence|>
