"""Official chat templates (Qwen2.5, Qwen3, DeepSeek-V3), rendered and counted as servers do.

vLLM and Hugging Face's ``apply_chat_template`` render the model's own Jinja template and
tokenize the result, which first splits out the vocabulary's added tokens (``<|im_start|>``,
``<tool_call>``, ``<think>``, DeepSeek's ``<|User|>`` with fullwidth bars...): each is one
token wherever it stands, in the template's text or typed in a message. ``proxy/templates/``
holds the templates (its SOURCES.md names where each comes from); they render here in jinja2's
immutable sandbox with the options and helpers transformers gives them. Llama 3's template is
under Meta's license and is not shipped; ``proxy.tokenization.templates`` renders Llama 3 and
older Qwen names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Literal

from proxy.tokenization.loading import Tokenizer, VocabularyError

if TYPE_CHECKING:
    import jinja2

TemplateName = Literal["qwen2.5", "qwen3", "deepseek-v3"]

# Qwen's added tokens (tokenizer_config.json, ids from 151643); the tiktoken vocabulary the
# proxy counts Qwen with has only the 151,643 byte-level ranks before them.
_QWEN25_ADDED: Final = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip
_QWEN3_ADDED: Final = (*_QWEN25_ADDED, "<tool_response>", "</tool_response>", "<think>", "</think>")


@dataclass(frozen=True, slots=True)
class _Spec:
    filename: str
    sha256: str
    added_tokens: tuple[str, ...]  # besides the vocabulary's own
    bos_token: str = ""
    # vLLM parses tool-call arguments (a JSON string in the OpenAI format) into objects before
    # rendering; Qwen's templates print them with tojson. DeepSeek-V3's concatenates strings.
    arguments_as_objects: bool = True


_SPECS: Final[dict[TemplateName, _Spec]] = {
    "qwen2.5": _Spec(
        "qwen2.5.jinja",
        "55b2f4a26ac9ee719330a61a0c39d9e538b0e9322212f048326318cff4f8674a",
        _QWEN25_ADDED,
    ),
    "qwen3": _Spec(
        "qwen3.jinja",
        "a55ee1b1660128b7098723e0abcd92caa0788061051c62d51cbe87d9cf1974d8",
        _QWEN3_ADDED,
    ),
    "deepseek-v3": _Spec(
        "deepseek-v3.jinja",
        "3a3036eeb96ca0e48565fc1f19b4d7d3fa17ada32bb1b3d5ed539ae74cf22923",
        (),
        bos_token="<\uff5cbegin\u2581of\u2581sentence\uff5c>",
        arguments_as_objects=False,
    ),
}


class TemplateRenderError(ValueError):
    """A chat cannot be rendered by its template (the template refused it or it is malformed)."""


class ChatTemplate:
    """One compiled template and the added tokens its prompts are split at; thread-safe."""

    def __init__(self, spec: _Spec, template: jinja2.Template, added: frozenset[str]) -> None:
        self._spec = spec
        self._template = template
        longest_first = sorted(added, key=len, reverse=True)
        self._added = re.compile("|".join(re.escape(token) for token in longest_first))

    def render(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
    ) -> str:
        """The prompt of a chat (OpenAI-format messages and function tools), reply primed."""
        import jinja2

        served = [self._as_served(message) for message in messages]
        try:
            return self._template.render(
                messages=served,
                tools=list(tools) or None,
                add_generation_prompt=True,
                bos_token=self._spec.bos_token,
            )
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError) as exc:
            raise TemplateRenderError(f"{self._spec.filename}: {exc}") from exc

    def count(self, tokenizer: Tokenizer, prompt: str) -> int:
        """Tokens of a rendered prompt: one per added token, the text between them encoded."""
        pieces = self._added.split(prompt)
        return len(pieces) - 1 + sum(tokenizer.count(piece) for piece in pieces)

    def _as_served(self, message: Mapping[str, Any]) -> dict[str, Any]:
        served = dict(message)
        if served.get("role") == "developer":
            served["role"] = "system"
        calls = served.get("tool_calls")
        if isinstance(calls, list):
            served["tool_calls"] = [self._call(call) for call in calls if isinstance(call, Mapping)]
        return served

    def _call(self, call: Mapping[str, Any]) -> dict[str, Any]:
        function = call.get("function")
        function = dict(function) if isinstance(function, Mapping) else {}
        function.setdefault("name", "")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments) if arguments is not None else "{}"
        if self._spec.arguments_as_objects:
            try:
                function["arguments"] = json.loads(arguments)
            except ValueError:
                function["arguments"] = arguments  # Qwen3's prints a string as it is
        else:
            function["arguments"] = arguments
        return {**call, "type": call.get("type") or "function", "function": function}


def load(name: TemplateName, tokenizer: Tokenizer) -> ChatTemplate:
    """Compile template ``name`` (hash-checked) for prompts counted with ``tokenizer``."""
    spec = _SPECS[name]
    try:
        data = resources.files("proxy").joinpath("templates", spec.filename).read_bytes()
    except FileNotFoundError as exc:
        raise VocabularyError(f"proxy/templates/{spec.filename} is missing; reinstall") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise VocabularyError(
            f"proxy/templates/{spec.filename} has sha256 {actual}, expected {spec.sha256}; "
            "restore it from proxy/templates/SOURCES.md"
        )
    template = _environment().from_string(data.decode("utf-8"))
    return ChatTemplate(spec, template, tokenizer.added_tokens | frozenset(spec.added_tokens))


def _environment() -> jinja2.Environment:
    """The environment transformers renders chat templates in (``_compile_jinja_template``)."""
    import jinja2.ext  # imported by the first count through a template, not by the app
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment
