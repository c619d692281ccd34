"""Local token counting: which tokenizer a model uses, and prompt and completion estimates.

The proxy counts tokens itself only when the upstream did not report usage. Each model gets a
tokenizer: the first matching ``tokenizers`` rule of the settings (a named encoding or a local
tokenizer file), else its family's default: tiktoken's encodings for OpenAI models, the
models' own vocabularies for Qwen, Llama 3 and DeepSeek-V3, a stand-in for Claude. Loading
never touches the network, writes no cache, reads no environment variable and checks every
vocabulary's sha256 (``proxy.tokenization.loading`` says where each comes from).

Chat prompts are wrapped in the family's chat format: OpenAI's per-message overhead and tool
rendering (``proxy.tokenization.openai_format``), the official Qwen2.5 / Qwen3 / DeepSeek-V3
Jinja templates (``proxy.tokenization.chat_templates``), Llama 3's and older Qwen names' formats
(``proxy.tokenization.templates``). Anthropic Messages requests are estimated with a stand-in
tokenizer and are approximate (``proxy.tokenization.anthropic``), as are Gemini
``generateContent`` requests (``proxy.tokenization.gemini``). Counting is synchronous and
thread-safe: callers run large inputs in worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from proxy.config import TokenizerRule
from proxy.gemini_api import gemini_call
from proxy.tokenization import chat_templates, templates
from proxy.tokenization.anthropic import messages_prompt
from proxy.tokenization.families import (
    ChatFamily,
    TokenizerChoice,
    choose,
    encoding_name_for_model,
    qwen_default_system,
)
from proxy.tokenization.gemini import contents_prompt
from proxy.tokenization.loading import (
    BUILTIN_NAMES,
    Tokenizer,
    VocabularyError,
    load_builtin,
    load_file,
    release_freed_heap,
)
from proxy.tokenization.openai_format import (
    PromptEstimate,
    Tally,
    chat_prompt,
    content_text,
    function_definitions,
    responses_prompt,
    tally_input,
)

_OFFICIAL_TEMPLATE: Final[dict[ChatFamily, chat_templates.TemplateName]] = {
    "qwen2.5": "qwen2.5",
    "qwen3": "qwen3",
    "deepseek": "deepseek-v3",
}

__all__ = [
    "PromptEstimate",
    "TokenCounter",
    "Tokenizer",
    "VocabularyError",
    "encoding_name_for_model",
]


class TokenCounter:
    """Counts tokens locally; loads each tokenizer once, on first use, from any thread.

    ``rules`` (the settings' ``tokenizers``) are tried in order before the family defaults.
    A rule naming an unknown encoding fails here, at start-up, rather than on first use.
    """

    def __init__(self, rules: Sequence[TokenizerRule] = ()) -> None:
        for rule in rules:
            if rule.encoding is not None and rule.encoding not in BUILTIN_NAMES:
                raise VocabularyError(
                    f"tokenizers: unknown encoding {rule.encoding!r} for {rule.model!r}; use "
                    f"one of {', '.join(sorted(BUILTIN_NAMES))} or give a file"
                )
        self._rules = tuple(rules)
        self._lock = threading.Lock()
        self._loaded: dict[str, Tokenizer] = {}
        self._templates: dict[tuple[str, str], chat_templates.ChatTemplate] = {}

    def count_text(self, model: str, text: str) -> int:
        """Tokens in ``text`` under ``model``'s tokenizer; special-token text counts as text."""
        return self.tokenizer_for(model).count(text)

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

        Chat completions follow the model family's chat format, including tools. Completions
        and embeddings count their input as is (token arrays by their length). The Responses
        API is best effort: ``instructions`` and each input message are counted like chat
        messages, function calls and their outputs like chat function calls. Anthropic
        ``/v1/messages`` and Gemini's ``generateContent`` are approximate (stand-in
        tokenizers). None for other endpoints and for bodies without the input the endpoint
        needs.
        """
        if not isinstance(body, Mapping):
            return None
        route = _route(endpoint)
        model = body.get("model")
        model = model if isinstance(model, str) else ""
        call = gemini_call(route.removeprefix("/v1beta").removeprefix("/"))
        if call is not None:
            model, route = call.model, f"gemini:{call.method}"
        choice = choose(model, self._rules)
        tally = Tally(self._load(choice))
        match route:
            case "/chat/completions" if choice.chat == "openai":
                found = chat_prompt(tally, body)
            case "/chat/completions" if choice.chat in _OFFICIAL_TEMPLATE:
                template = self._template(_OFFICIAL_TEMPLATE[choice.chat], tally.tokenizer)
                found = _official_template_prompt(tally, template, body)
            case "/chat/completions":
                found = _template_prompt(tally, choice, model, body)
            case "/completions":
                found = tally_input(tally, body.get("prompt"))
                if found and isinstance(body.get("suffix"), str):
                    tally.add(body["suffix"])
            case "/embeddings":
                found = tally_input(tally, body.get("input"))
            case "/responses":
                found = responses_prompt(tally, body)
            case "/messages":
                found = messages_prompt(tally, body)
            case "gemini:generateContent" | "gemini:streamGenerateContent":
                found = contents_prompt(tally, body)
            case _:
                found = False
        return tally.estimate() if found else None

    def tokenizer_for(self, model: str) -> Tokenizer:
        """The tokenizer that counts ``model``'s text, loaded on first use."""
        return self._load(choose(model, self._rules))

    def preload_default(self) -> Tokenizer:
        """Load now the tokenizer of models without a rule or a known family.

        That is ``o200k_base`` unless a rule matches every name (``model: "*"``). A load holds
        the GIL for about 0.3 s: done at start-up, no request waits for it.
        """
        return self.tokenizer_for("")

    def tokenizer(self, name: str) -> Tokenizer:
        """The built-in tokenizer called ``name`` (e.g. ``"o200k_base"``, ``"qwen"``)."""
        return self._cached(name, lambda: load_builtin(name))

    def _load(self, choice: TokenizerChoice) -> Tokenizer:
        if choice.file is not None:
            path, kind = choice.file, choice.kind
            return self._cached(f"file:{path}:{kind}", lambda: load_file(path, kind))
        return self.tokenizer(choice.encoding or "o200k_base")

    def _template(
        self, name: chat_templates.TemplateName, tokenizer: Tokenizer
    ) -> chat_templates.ChatTemplate:
        key = (name, tokenizer.name)
        template = self._templates.get(key)
        if template is None:
            with self._lock:
                template = self._templates.get(key)
                if template is None:
                    template = chat_templates.load(name, tokenizer)
                    self._templates[key] = template
        return template

    def _cached(self, key: str, load: Callable[[], Tokenizer]) -> Tokenizer:
        tokenizer = self._loaded.get(key)
        if tokenizer is None:
            # One lock for all loads: a load takes under a second and happens once per name.
            with self._lock:
                tokenizer = self._loaded.get(key)
                if tokenizer is None:
                    tokenizer = load()
                    release_freed_heap()
                    self._loaded[key] = tokenizer
        return tokenizer


def _route(endpoint: str) -> str:
    path = endpoint.split("?", 1)[0].rstrip("/")
    return path.removeprefix("/v1") if path.startswith("/v1/") else path


def _official_template_prompt(
    tally: Tally, template: chat_templates.ChatTemplate, body: Mapping[str, Any]
) -> bool:
    """A chat rendered by the model's official template and counted as the server would."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    chat = [
        {**message, "content": content_text(tally, message.get("content"))}
        for message in messages
        if isinstance(message, Mapping)
    ]
    functions = function_definitions(tally, body.get("tools"), body.get("functions"))
    tools = [{"type": "function", "function": function} for function in functions]
    try:
        prompt = template.render(chat, tools)
    except chat_templates.TemplateRenderError:
        return False
    tally.tokens += template.count(tally.tokenizer, prompt)
    return True


def _template_prompt(
    tally: Tally, choice: TokenizerChoice, model: str, body: Mapping[str, Any]
) -> bool:
    """A chat to Llama 3 or an older Qwen name, counted through its chat format."""
    messages = body.get("messages")
    if not isinstance(messages, list) or choice.chat not in ("qwen", "llama3"):
        return False
    chat: list[templates.ChatMessage] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        chat.append(
            templates.ChatMessage(
                role=role if isinstance(role, str) else "",
                text=content_text(tally, message.get("content")),
                tool_calls=_tool_calls(message.get("tool_calls")),
            )
        )
    tools = function_definitions(tally, body.get("tools"), body.get("functions"))
    default_system = qwen_default_system(model) if choice.chat == "qwen" else None
    rendered = templates.render(
        "qwen" if choice.chat == "qwen" else "llama3", chat, tools, default_system
    )
    tally.tokens += rendered.specials
    for text in rendered.texts:
        tally.add(text)
    return True


def _tool_calls(value: Any) -> tuple[tuple[str, str], ...]:
    calls: list[tuple[str, str]] = []
    for call in value if isinstance(value, list) else []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            name, arguments = function.get("name"), function.get("arguments")
            calls.append(
                (
                    name if isinstance(name, str) else "",
                    arguments if isinstance(arguments, str) else "",
                )
            )
    return tuple(calls)
