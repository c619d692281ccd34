"""Local token counting: which tokenizer a model uses, and prompt and completion estimates.

The proxy counts tokens itself only when the upstream did not report usage. Counts use
tiktoken with vocabularies vendored under ``proxy/vocab/`` (see
``scripts/vendor_tokenizers.sh``): loading never touches the network, never writes a cache
and reads no environment variable, and each file's sha256 is checked against the hash
tiktoken itself expects.

Chat prompts add the chat format's overhead (3 tokens per message, 1 per ``name``, 3 to prime
the reply) and render ``tools`` / ``functions`` the way OpenAI puts them into the prompt, a
TypeScript-like ``namespace functions { ... }`` block. That rendering and its corrections were
reverse-engineered by the openai-chat-tokens project (hmarr) and match the prompt_tokens the
API reports in the OpenAI cookbook for gpt-3.5-turbo, gpt-4 and gpt-4o.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import types
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import tiktoken
from tiktoken_ext import openai_public

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

# Files vendored by scripts/vendor_tokenizers.sh; a name outside this set means tiktoken_ext
# asked for something we do not ship.
_VENDORED_FILES: Final = frozenset(
    {"o200k_base.tiktoken", "cl100k_base.tiktoken", "p50k_base.tiktoken"}
)

# Chat format overhead, from the OpenAI cookbook (How_to_count_tokens_with_tiktoken).
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

# fancy-regex (inside tiktoken) fails with a panic, not an exception, on whitespace runs of a
# few hundred thousand characters and slows down quadratically well before that, so long text
# is counted in chunks. 32k characters keeps both far away.
_CHUNK_CHARS: Final = 32_768
_SPLIT_SEARCH_CHARS: Final = 2_048

_PART_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("image_url", "image"),
    ("input_image", "image"),
    ("input_audio", "audio"),
    ("file", "file"),
    ("input_file", "file"),
)


class VocabularyError(RuntimeError):
    """A vendored tokenizer vocabulary is missing or does not match tiktoken's hash."""


@dataclass(frozen=True, slots=True)
class PromptEstimate:
    """A local prompt token count and the kinds of input it could not count.

    ``excluded`` names what the request carried but the count leaves out, in order of first
    appearance, e.g. ``("image",)``: images, audio, files, non-function tools, a previous
    response's context. Empty when the estimate covers the whole prompt.
    """

    tokens: int
    excluded: tuple[str, ...] = ()


def encoding_name_for_model(model: str) -> str:
    """The tiktoken encoding a model uses, e.g. ``"o200k_base"`` for ``"gpt-4o-mini"``.

    Provider prefixes (``openai/gpt-4o``) and fine-tune names (``ft:gpt-4o-mini:org::id``)
    are reduced to the base model. Unknown models, including other vendors' models, fall
    back to ``o200k_base``: an estimate from the newest OpenAI vocabulary is closer than none.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = name.removeprefix("ft:").split(":", 1)[0]
    for exact, encoding in _ENCODING_BY_NAME:
        if name == exact:
            return encoding
    for prefix, encoding in _ENCODING_BY_PREFIX:
        if name.startswith(prefix):
            return encoding
    return O200K_BASE


class TokenCounter:
    """Counts tokens locally; loads each encoding once, on first use, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._encodings: dict[str, tiktoken.Encoding] = {}

    def count_text(self, model: str, text: str) -> int:
        """Tokens in ``text`` under ``model``'s encoding; special-token text counts as text."""
        return _count(self.encoding(encoding_name_for_model(model)), text)

    def completion_tokens(self, model: str, text: str) -> int:
        """Tokens of generated text: content deltas concatenated with tool-call arguments."""
        return self.count_text(model, text)

    def prompt_tokens(self, endpoint: str, body: Mapping[str, Any]) -> int | None:
        """Estimated prompt tokens of a request, or None for endpoints it cannot estimate.

        See ``prompt_estimate`` for what the count leaves out.
        """
        estimate = self.prompt_estimate(endpoint, body)
        return None if estimate is None else estimate.tokens

    def prompt_estimate(self, endpoint: str, body: Mapping[str, Any]) -> PromptEstimate | None:
        """Estimate the prompt of a request to ``endpoint`` (a path like /v1/chat/completions).

        Chat completions follow the chat format, including tools and functions. Completions
        and embeddings count their input as is (token arrays by their length). The Responses
        API is best effort: ``instructions`` and each input message are counted like chat
        messages, function calls and their outputs like chat function calls. None for other
        endpoints and for bodies without the input the endpoint needs.
        """
        if not isinstance(body, Mapping):
            return None
        model = body.get("model")
        tally = _Tally(
            self.encoding(encoding_name_for_model(model if isinstance(model, str) else ""))
        )
        match _route(endpoint):
            case "/chat/completions":
                found = _chat_prompt(tally, body)
            case "/completions":
                found = _tally_input(tally, body.get("prompt"))
                if found and isinstance(body.get("suffix"), str):
                    tally.add(body["suffix"])
            case "/embeddings":
                found = _tally_input(tally, body.get("input"))
            case "/responses":
                found = _responses_prompt(tally, body)
            case _:
                found = False
        return tally.estimate() if found else None

    def encoding(self, name: str) -> tiktoken.Encoding:
        """The encoding called ``name`` (e.g. ``"o200k_base"``), loaded on first use."""
        encoding = self._encodings.get(name)
        if encoding is None:
            with self._lock:
                encoding = self._encodings.get(name)
                if encoding is None:
                    encoding = _load_encoding(name)
                    self._encodings[name] = encoding
        return encoding


class _Tally:
    """Running count for one request; lives only for one prompt_estimate call."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.tokens = 0
        self.excluded: dict[str, None] = {}

    def count(self, text: str) -> int:
        return _count(self.encoding, text)

    def add(self, text: str) -> None:
        self.tokens += _count(self.encoding, text)

    def exclude(self, kind: str) -> None:
        self.excluded.setdefault(kind)

    def estimate(self) -> PromptEstimate:
        return PromptEstimate(tokens=self.tokens, excluded=tuple(self.excluded))


def _route(endpoint: str) -> str:
    path = endpoint.split("?", 1)[0].rstrip("/")
    return path.removeprefix("/v1") if path.startswith("/v1/") else path


def _count(encoding: tiktoken.Encoding, text: str) -> int:
    # encode_ordinary: "<|endoftext|>" typed by a user is text, never a special token.
    if len(text) <= _CHUNK_CHARS:
        return len(encoding.encode_ordinary(text))
    return sum(len(encoding.encode_ordinary(chunk)) for chunk in _chunks(text))


def _chunks(text: str) -> Iterator[str]:
    """Split long text where the encodings' pre-tokenizer splits anyway, so counts stay exact."""
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        end = _split_point(text, start + _CHUNK_CHARS)
        yield text[start:end]
        start = end
    yield text[start:]


def _split_point(text: str, target: int) -> int:
    # After a letter, a character that is not a letter, combining mark or apostrophe always
    # starts a new piece in o200k, cl100k and p50k alike (their patterns have no look-behind),
    # so both halves encode exactly as the whole would. Text without such a place nearby
    # (2k characters of one script run, or of whitespace) is cut at the target: off by a token
    # or two per 32k characters.
    for index in range(target, target - _SPLIT_SEARCH_CHARS, -1):
        if text[index - 1].isalpha() and _starts_new_piece(text[index]):
            return index
    return target


def _starts_new_piece(char: str) -> bool:
    return not (char.isalpha() or char == "'" or unicodedata.category(char).startswith("M"))


def _tally_input(tally: _Tally, value: Any) -> bool:
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


def _chat_prompt(tally: _Tally, body: Mapping[str, Any]) -> bool:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    functions = _function_definitions(tally, body.get("tools"), body.get("functions"))
    # With functions, the API appends a newline to the first system message (hmarr).
    pad_system = bool(functions)
    has_system = False
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        role = role if isinstance(role, str) else ""
        text = _content_text(tally, message.get("content"))
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


def _tally_message(tally: _Tally, role: str, text: str, message: Mapping[str, Any]) -> None:
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


def _tally_call(tally: _Tally, name: Any, arguments: Any) -> None:
    # Measured for legacy function_call (name + arguments + 3); tool calls are assumed alike.
    tally.tokens += _CALL_OVERHEAD
    for text in (name, arguments):
        if isinstance(text, str):
            tally.add(text)


def _forced_call_tokens(tally: _Tally, choice: Any) -> int:
    if choice == "none":
        return _CALL_NONE
    if not isinstance(choice, Mapping):
        return 0  # "auto", "required" and absent add nothing measurable
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
    return tally.count(name) + _FORCED_CALL_OVERHEAD if isinstance(name, str) else 0


def _content_text(tally: _Tally, content: Any) -> str:
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


def _function_definitions(tally: _Tally, tools: Any, functions: Any) -> list[Mapping[str, Any]]:
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


def _responses_prompt(tally: _Tally, body: Mapping[str, Any]) -> bool:
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
    functions = _function_definitions(tally, body.get("tools"), None)
    if functions:
        tally.add(_render_functions(functions))
        tally.tokens += _FUNCTIONS_OVERHEAD
    if body.get("previous_response_id"):
        tally.exclude("previous_response")
    return True


def _tally_response_item(tally: _Tally, item: Mapping[str, Any]) -> None:
    kind = item.get("type") or "message"
    if kind == "message":
        role = item.get("role")
        text = _content_text(tally, item.get("content"))
        _tally_message(tally, role if isinstance(role, str) else "", text, {})
    elif kind in ("function_call", "custom_tool_call"):
        _tally_call(tally, item.get("name"), item.get("arguments", item.get("input")))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        text = output if isinstance(output, str) else _content_text(tally, output)
        _tally_message(tally, "tool", text, {})
    else:
        tally.exclude(str(kind))


def _load_encoding(name: str) -> tiktoken.Encoding:
    """Build an encoding from tiktoken_ext's own definition, reading the vendored vocabulary.

    The constructor runs with a private copy of its module globals in which
    ``load_tiktoken_bpe`` reads ``proxy/vocab`` instead of downloading, so the regex, the
    special tokens and the expected hash all come from tiktoken_ext and nothing is patched.
    """
    constructor = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if constructor is None:
        raise VocabularyError(f"tiktoken_ext defines no encoding named {name!r}")
    isolated_globals = {
        **constructor.__globals__,
        "load_tiktoken_bpe": _read_vendored_ranks,
        "data_gym_to_mergeable_bpe_ranks": _refuse_download,
    }
    isolated = types.FunctionType(
        constructor.__code__,
        isolated_globals,
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )
    return tiktoken.Encoding(**isolated())


def _read_vendored_ranks(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
    filename = blobpath.rsplit("/", 1)[-1]
    if filename not in _VENDORED_FILES or expected_hash is None:
        raise VocabularyError(
            f"{blobpath} is not vendored with a known hash; add it to scripts/vendor_tokenizers.sh"
        )
    try:
        data = resources.files(__package__ or "proxy").joinpath("vocab", filename).read_bytes()
    except FileNotFoundError as exc:
        raise VocabularyError(
            f"proxy/vocab/{filename} is missing; run scripts/vendor_tokenizers.sh"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_hash:
        raise VocabularyError(
            f"proxy/vocab/{filename} has sha256 {actual}, tiktoken expects {expected_hash}; "
            "re-run scripts/vendor_tokenizers.sh"
        )
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


def _refuse_download(*args: object, **kwargs: object) -> dict[bytes, int]:
    raise VocabularyError("the gpt2 vocabulary is not vendored; tallyproxy never downloads one")
