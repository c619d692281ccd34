"""OpenAI request formats: chat messages, tools rendered as OpenAI does, Responses items.

Chat prompts add the chat format's overhead (3 tokens per message, 1 per ``name``, 3 to prime
the reply) and render ``tools`` / ``functions`` the way OpenAI puts them into the prompt, a
TypeScript-like ``namespace functions { ... }`` block. That rendering and its corrections were
reverse-engineered by the openai-chat-tokens project (hmarr) and match the prompt_tokens the
API reports in the OpenAI cookbook for gpt-3.5-turbo, gpt-4 and gpt-4o.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from proxy.tokenization.loading import Tokenizer

_TOKENS_PER_MESSAGE: Final = 3
_TOKENS_PER_NAME: Final = 1
_REPLY_PRIMING: Final = 3
# Corrections measured against the API by openai-chat-tokens (hmarr).
_FUNCTIONS_OVERHEAD: Final = 9
_FUNCTIONS_WITH_SYSTEM: Final = -4
_FUNCTION_ROLE: Final = -2
_CALL_OVERHEAD: Final = 3
_FORCED_CALL_OVERHEAD: Final = 4
_CALL_NONE: Final = 1
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})

_PART_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("image_url", "image"),
    ("input_image", "image"),
    ("input_audio", "audio"),
    ("file", "file"),
    ("input_file", "file"),
)


@dataclass(frozen=True, slots=True)
class PromptEstimate:
    """A local prompt token count and the kinds of input it could not count.

    ``excluded`` names what the request carried but the count leaves out, in order of first
    appearance, e.g. ``("image",)``: images, audio, files, non-function tools, a previous
    response's context. Empty when the estimate covers the whole prompt.
    """

    tokens: int
    excluded: tuple[str, ...] = ()


class Tally:
    """Running count for one request; lives only for one prompt estimate."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens = 0
        self.excluded: dict[str, None] = {}

    def count(self, text: str) -> int:
        """Tokens of ``text``, not added to the tally."""
        return self.tokenizer.count(text)

    def add(self, text: str) -> None:
        """Add the tokens of ``text``."""
        self.tokens += self.tokenizer.count(text)

    def exclude(self, kind: str) -> None:
        """Note that the prompt carries ``kind`` (e.g. ``"image"``) and the count leaves it out."""
        self.excluded.setdefault(kind)

    def estimate(self) -> PromptEstimate:
        """The tally as a PromptEstimate."""
        return PromptEstimate(tokens=self.tokens, excluded=tuple(self.excluded))


def tally_input(tally: Tally, value: Any) -> bool:
    """Count a completions prompt or embeddings input: text, texts, token array(s)."""
    if isinstance(value, str):
        tally.add(value)
        return True
    if not isinstance(value, list):
        return False
    for item in value:
        if isinstance(item, str):
            tally.add(item)
        elif isinstance(item, int):
            tally.tokens += 1
        elif isinstance(item, list):
            tally.tokens += len(item)
    return True


def chat_prompt(tally: Tally, body: Mapping[str, Any]) -> bool:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    functions = function_definitions(tally, body.get("tools"), body.get("functions"))
    # With functions, the API appends a newline to the first system message (hmarr).
    pad_system = bool(functions)
    has_system = False
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        role = role if isinstance(role, str) else ""
        text = content_text(tally, message.get("content"))
        if role in _SYSTEM_ROLES:
            has_system = True
            if pad_system:
                text += "\n"
                pad_system = False
        _tally_message(tally, role, text, message)
    tally.tokens += _REPLY_PRIMING
    if functions:
        tally.add(_render_functions(functions))
        tally.tokens += _FUNCTIONS_OVERHEAD + (_FUNCTIONS_WITH_SYSTEM if has_system else 0)
        choice = body.get("tool_choice", body.get("function_call"))
        tally.tokens += _forced_call_tokens(tally, choice)
    return True


def _tally_message(tally: Tally, role: str, text: str, message: Mapping[str, Any]) -> None:
    tally.tokens += _TOKENS_PER_MESSAGE + tally.count(role) + tally.count(text)
    name = message.get("name")
    if isinstance(name, str) and name:
        tally.tokens += tally.count(name) + _TOKENS_PER_NAME
    if role == "function":
        tally.tokens += _FUNCTION_ROLE
    if message.get("audio") is not None:
        tally.exclude("audio")
    calls: list[Any] = [message.get("function_call")]
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        calls += [call.get("function") for call in tool_calls if isinstance(call, Mapping)]
    for call in calls:
        if isinstance(call, Mapping):
            _tally_call(tally, call.get("name"), call.get("arguments"))


def _tally_call(tally: Tally, name: Any, arguments: Any) -> None:
    # Measured for legacy function_call (name + arguments + 3); tool calls are assumed alike.
    tally.tokens += _CALL_OVERHEAD
    for text in (name, arguments):
        if isinstance(text, str):
            tally.add(text)


def _forced_call_tokens(tally: Tally, choice: Any) -> int:
    if choice == "none":
        return _CALL_NONE
    if not isinstance(choice, Mapping):
        return 0  # "auto", "required" and absent add nothing measurable
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
    return tally.count(name) + _FORCED_CALL_OVERHEAD if isinstance(name, str) else 0


def content_text(tally: Tally, content: Any) -> str:
    """The text of a message's content; non-text parts are recorded as excluded."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        text = part.get("text", part.get("refusal"))
        if kind in ("text", "input_text", "output_text", "refusal") and isinstance(text, str):
            texts.append(text)
        else:
            tally.exclude(_part_kind(kind))
    return "".join(texts)


def _part_kind(kind: Any) -> str:
    for part_type, excluded in _PART_KINDS:
        if kind == part_type:
            return excluded
    return kind if isinstance(kind, str) else "unknown"


def function_definitions(tally: Tally, tools: Any, functions: Any) -> list[Mapping[str, Any]]:
    """Function definitions from chat ``tools``, Responses ``tools`` or legacy ``functions``."""
    found: list[Mapping[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, Mapping):
            continue
        if tool.get("type") != "function":
            tally.exclude("tool")
        elif isinstance(tool.get("function"), Mapping):
            found.append(tool["function"])
        elif isinstance(tool.get("name"), str):
            found.append(tool)  # Responses API: the definition is the tool itself
    found += [
        f for f in (functions if isinstance(functions, list) else []) if isinstance(f, Mapping)
    ]
    return found


def _render_functions(functions: Sequence[Mapping[str, Any]]) -> str:
    """Function definitions as OpenAI renders them into the prompt (TypeScript-like).

    Follows openai-chat-tokens (hmarr): descriptions become ``//`` comments (those of
    properties nested two levels deep are dropped), optional properties get ``?``, enums
    become literal unions, ``anyOf`` becomes ``|``.
    """
    lines = ["namespace functions {", ""]
    for function in functions:
        name = function.get("name", "")
        description = function.get("description")
        if description:
            lines.append(f"// {description}")
        parameters = function.get("parameters")
        if isinstance(parameters, Mapping) and parameters.get("properties"):
            lines.append(f"type {name} = (_: {{")
            lines.append(_render_properties(parameters, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _render_properties(schema: Mapping[str, Any], indent: int) -> str:
    properties = schema.get("properties")
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    lines: list[str] = []
    for name, prop in properties.items() if isinstance(properties, Mapping) else ():
        prop = prop if isinstance(prop, Mapping) else {}
        if prop.get("description") and indent < 2:
            lines.append(f"// {prop['description']}")
        optional = "" if name in required else "?"
        lines.append(f"{name}{optional}: {_render_type(prop, indent)},")
    return "\n".join(" " * indent + line for line in lines)


def _render_type(prop: Mapping[str, Any], indent: int) -> str:
    any_of = prop.get("anyOf")
    if isinstance(any_of, list):
        return " | ".join(_render_type(p if isinstance(p, Mapping) else {}, indent) for p in any_of)
    kind = prop.get("type")
    enum = prop.get("enum")
    if kind == "string":
        return " | ".join(f'"{value}"' for value in enum) if enum else "string"
    if kind in ("number", "integer"):
        return " | ".join(_js_number(value) for value in enum) if enum else "number"
    if kind in ("boolean", "null"):
        return str(kind)
    if kind == "object":
        return "\n".join(["{", _render_properties(prop, indent + 2), "}"])
    if kind == "array":
        items = prop.get("items")
        return f"{_render_type(items, indent)}[]" if isinstance(items, Mapping) else "any[]"
    return ""


def _js_number(value: Any) -> str:
    # JavaScript prints 1.0 as "1"; the renderer was measured with JavaScript.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def responses_prompt(tally: Tally, body: Mapping[str, Any]) -> bool:
    instructions = body.get("instructions")
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) and not isinstance(instructions, str):
        return False
    if isinstance(instructions, str):
        _tally_message(tally, "system", instructions, {})
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping):
            _tally_response_item(tally, item)
    tally.tokens += _REPLY_PRIMING
    functions = function_definitions(tally, body.get("tools"), None)
    if functions:
        tally.add(_render_functions(functions))
        tally.tokens += _FUNCTIONS_OVERHEAD
    if body.get("previous_response_id"):
        tally.exclude("previous_response")
    return True


def _tally_response_item(tally: Tally, item: Mapping[str, Any]) -> None:
    kind = item.get("type") or "message"
    if kind == "message":
        role = item.get("role")
        text = content_text(tally, item.get("content"))
        _tally_message(tally, role if isinstance(role, str) else "", text, {})
    elif kind in ("function_call", "custom_tool_call"):
        _tally_call(tally, item.get("name"), item.get("arguments", item.get("input")))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        text = output if isinstance(output, str) else content_text(tally, output)
        _tally_message(tally, "tool", text, {})
    else:
        tally.exclude(str(kind))
