"""Pure extraction of token usage from provider payloads and stream events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.tool_calls import StreamToolCalls


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request, as a provider reports them or as estimated locally.

    ``prompt_tokens`` includes cached and cache-creation tokens; ``completion_tokens`` includes
    reasoning and audio output tokens. ``repaired``: the provider's total was smaller than its
    prompt and completion (LiteLLM's mock embeddings answer ``total_tokens: 0``), and
    ``total_tokens`` is their sum instead.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_audio_tokens: int = 0
    completion_audio_tokens: int = 0
    repaired: bool = False


def usage_from_payload(payload: Mapping[str, Any]) -> Usage | None:
    """Return the token usage reported in a non-streamed response body, or None.

    Understands chat and legacy completions, embeddings, the Responses API object, Anthropic
    messages, DeepSeek's cache fields and Gemini's ``usageMetadata``. Returns None when the
    body has no usable ``usage`` (absent, null, or without a single valid count); bad values
    never raise.
    """
    if not isinstance(payload, Mapping):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, Mapping):
        metadata = payload.get("usageMetadata")
        return gemini_usage(metadata) if isinstance(metadata, Mapping) else None
    if payload.get("type") == "message":
        return _anthropic_usage(usage)
    if payload.get("object") == "response":
        return _responses_usage(usage)
    return _usage_by_shape(usage)


def response_model_of(payload: Mapping[str, Any]) -> str | None:
    """The model an answer names: ``model``, or Gemini's ``modelVersion``."""
    model = payload.get("model")
    if model is None:
        model = payload.get("modelVersion")
        if isinstance(model, str):
            model = model.removeprefix("models/")
    return model if isinstance(model, str) and model else None


def is_usage_only_chunk(event: Mapping[str, Any]) -> bool:
    """Tell whether a chat/completions stream chunk is the extra one that only carries usage.

    That chunk (a non-null ``usage``, ``choices: []``) is what ``stream_options.include_usage``
    adds; the proxy drops it when it asked for usage on the client's behalf. LiteLLM's proxy
    (and servers built like it) send it with one empty choice instead, after the
    ``finish_reason`` chunk: ``"choices": [{"index": 0, "delta": {}}]``. Choices that say
    nothing (no text, no delta content, no finish reason, no logprobs) count as none.
    """
    if not isinstance(event, Mapping) or not isinstance(event.get("usage"), Mapping):
        return False
    choices = event.get("choices")
    return isinstance(choices, list) and all(_says_nothing(choice) for choice in choices)


def _says_nothing(choice: object) -> bool:
    """A stream choice without content: every field but ``index`` empty or null."""
    if not isinstance(choice, Mapping):
        return False
    for name, value in choice.items():
        if name == "index":
            continue
        if name == "delta" and isinstance(value, Mapping):
            if any(_carries(item) for item in value.values()):
                return False
        elif _carries(value):
            return False
    return True


def _carries(value: object) -> bool:
    return value is not None and value != "" and value != [] and value != {}


class StreamAccumulator:
    """Watch the parsed ``data`` of a stream's events and keep what metering needs.

    Feed every event in order. Afterwards ``usage`` holds the provider's final counts (None if
    the stream carried none), ``response_model`` the model that answered, ``text`` everything
    generated so far (for a local estimate when usage is missing) and ``finished`` whether the
    stream reached its normal end, ``tool_calls`` the tool calls it asked for. ``feed`` is
    called on every chunk, so it does as little as it can, and odd input is ignored rather
    than raised on.
    """

    __slots__ = ("_anthropic", "_parts", "finished", "response_model", "tools", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.finished: bool = False
        self._parts: list[str] = []
        # Anthropic splits usage over message_start (input side) and message_delta (output,
        # cumulative); the merged raw fields are kept so each delta can be re-read whole.
        self._anthropic: dict[str, Any] = {}
        self.tools = StreamToolCalls()

    @property
    def tool_calls(self) -> int:
        """The tool calls the stream asked for so far."""
        return self.tools.count

    @property
    def text(self) -> str:
        """Everything generated so far: text, refusals, reasoning and tool-call arguments."""
        parts = self._parts
        if len(parts) > 1:
            # Collapse once so repeated reads stay cheap.
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""

    def feed(self, event: Mapping[str, Any], event_type: str | None = None) -> None:
        """Take in one event's parsed JSON ``data`` (``event_type`` from its ``event:`` line)."""
        if not isinstance(event, Mapping):
            return
        kind = event.get("type")
        if not isinstance(kind, str):
            kind = event_type
        match kind:
            case "content_block_delta":
                self._feed_anthropic_delta(event.get("delta"))
            case (
                "response.output_text.delta"
                | "response.function_call_arguments.delta"
                | "response.refusal.delta"
            ):
                self._append(event.get("delta"))
            case "response.completed" | "response.incomplete":
                self._feed_response_object(event.get("response"))
                self.finished = True
            case "response.failed" | "response.created" | "response.in_progress":
                self._feed_response_object(event.get("response"))
            case "message_start":
                self._feed_anthropic_start(event.get("message"))
            case "message_delta":
                self._feed_anthropic_usage(event.get("usage"))
            case "message_stop":
                self.finished = True
            case "content_block_start":
                self.tools.anthropic_block(event.get("content_block"))
            case _ if "candidates" in event or "usageMetadata" in event:
                self._feed_gemini_chunk(event)
            case _:
                self._feed_chat_chunk(event)

    def _append(self, value: object) -> None:
        if isinstance(value, str) and value:
            self._parts.append(value)

    def _feed_chat_chunk(self, event: Mapping[str, Any]) -> None:
        model = event.get("model")
        if isinstance(model, str) and model:
            self.response_model = model
        choices = event.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, Mapping):
                    self._feed_choice(choice)
        usage = event.get("usage")
        if isinstance(usage, Mapping):
            # Chunks carry usage only at the end, or on every chunk with vLLM's continuous
            # usage stats; either way the last one is the running total.
            found = _usage_by_shape(usage)
            if found is not None:
                self.usage = found

    def _feed_choice(self, choice: Mapping[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            append = self._append
            append(delta.get("content"))
            append(delta.get("refusal"))
            append(delta.get("reasoning_content"))
            append(delta.get("reasoning"))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, Mapping):
                        self._feed_function(call.get("function"))
                        self.tools.chat_call(choice.get("index"), call)
            function_call = delta.get("function_call")
            self._feed_function(function_call)
            self.tools.chat_function_call(choice.get("index"), function_call)
        else:
            self._append(choice.get("text"))
        if choice.get("finish_reason") is not None:
            self.finished = True

    def _feed_function(self, function: object) -> None:
        if isinstance(function, Mapping):
            self._append(function.get("name"))
            self._append(function.get("arguments"))

    def _feed_response_object(self, response: object) -> None:
        if not isinstance(response, Mapping):
            return
        model = response.get("model")
        if isinstance(model, str) and model:
            self.response_model = model
        self.tools.responses_output(response.get("output"))
        usage = response.get("usage")
        if isinstance(usage, Mapping):
            found = _responses_usage(usage)
            if found is not None:
                self.usage = found

    def _feed_gemini_chunk(self, event: Mapping[str, Any]) -> None:
        """One ``GenerateContentResponse`` of a Gemini stream: each carries the running
        ``usageMetadata``, so the last one is the total."""
        model = response_model_of(event)
        if model is not None:
            self.response_model = model
        candidates = event.get("candidates")
        if isinstance(candidates, list):
            for candidate in candidates:
                if isinstance(candidate, Mapping):
                    self._parts.extend(gemini_texts(candidate.get("content")))
                    self.tools.gemini_content(candidate.get("content"))
                    if candidate.get("finishReason") is not None:
                        self.finished = True
        metadata = event.get("usageMetadata")
        if isinstance(metadata, Mapping):
            found = gemini_usage(metadata)
            if found is not None:
                self.usage = found

    def _feed_anthropic_start(self, message: object) -> None:
        if not isinstance(message, Mapping):
            return
        model = message.get("model")
        if isinstance(model, str) and model:
            self.response_model = model
        self._feed_anthropic_usage(message.get("usage"))

    def _feed_anthropic_usage(self, usage: object) -> None:
        if not isinstance(usage, Mapping):
            return
        # Later events repeat or update counts (output_tokens is cumulative); null means
        # "not reported here", not zero.
        self._anthropic.update((k, v) for k, v in usage.items() if v is not None)
        found = _anthropic_usage(self._anthropic)
        if found is not None:
            self.usage = found

    def _feed_anthropic_delta(self, delta: object) -> None:
        if not isinstance(delta, Mapping):
            return
        match delta.get("type"):
            case "text_delta":
                self._append(delta.get("text"))
            case "input_json_delta":
                self._append(delta.get("partial_json"))
            case "thinking_delta":
                self._append(delta.get("thinking"))


def _count(value: object) -> int | None:
    """A token count, or None when upstream sent something that is not a non-negative int."""
    # bool is an int subclass; True is not a token count.
    if type(value) is int and value >= 0:
        return value
    return None


def _detail(usage: Mapping[str, Any], details_key: str, key: str) -> int | None:
    details = usage.get(details_key)
    if isinstance(details, Mapping):
        return _count(details.get(key))
    return None


def _total(prompt: int, completion: int, reported: int | None) -> tuple[int, bool]:
    """The total to record, and whether the provider's was replaced by the sum of its parts.

    Missing, it is the sum. Smaller than the sum it cannot be right (a total of 0 beside
    counted tokens); a larger one is kept, as it may count what tallyproxy does not split out.
    """
    parts = prompt + completion
    if reported is None:
        return parts, False
    if reported < parts:
        return parts, True
    return reported, False


def _usage_by_shape(usage: Mapping[str, Any]) -> Usage | None:
    """Pick the dialect of a bare ``usage`` object from its keys."""
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return _chat_usage(usage)
    if "cache_creation_input_tokens" in usage or "cache_read_input_tokens" in usage:
        return _anthropic_usage(usage)
    if "input_tokens" in usage or "output_tokens" in usage:
        return _responses_usage(usage)
    return _chat_usage(usage)


def _chat_usage(usage: Mapping[str, Any]) -> Usage | None:
    """chat.completion, text_completion, embeddings and OpenAI-compatible servers."""
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    total = _count(usage.get("total_tokens"))
    if prompt is None and completion is None and total is None:
        return None
    prompt = prompt or 0
    completion = completion or 0
    cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
    if cached is None:
        # DeepSeek reports its context cache at the top level instead.
        cached = _count(usage.get("prompt_cache_hit_tokens"))
    total, repaired = _total(prompt, completion, total)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=cached or 0,
        reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens") or 0,
        prompt_audio_tokens=_detail(usage, "prompt_tokens_details", "audio_tokens") or 0,
        completion_audio_tokens=_detail(usage, "completion_tokens_details", "audio_tokens") or 0,
        repaired=repaired,
    )


def _responses_usage(usage: Mapping[str, Any]) -> Usage | None:
    """The Responses API, whose ``input_tokens`` already include cached ones."""
    prompt = _count(usage.get("input_tokens"))
    completion = _count(usage.get("output_tokens"))
    total = _count(usage.get("total_tokens"))
    if prompt is None and completion is None and total is None:
        return None
    prompt = prompt or 0
    completion = completion or 0
    total, repaired = _total(prompt, completion, total)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=_detail(usage, "input_tokens_details", "cached_tokens") or 0,
        reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens") or 0,
        repaired=repaired,
    )


def _anthropic_usage(usage: Mapping[str, Any]) -> Usage | None:
    """Anthropic, whose ``input_tokens`` exclude cache reads and writes: the prompt is the sum."""
    fresh = _count(usage.get("input_tokens"))
    written = _count(usage.get("cache_creation_input_tokens"))
    read = _count(usage.get("cache_read_input_tokens"))
    completion = _count(usage.get("output_tokens"))
    if fresh is None and written is None and read is None and completion is None:
        return None
    prompt = (fresh or 0) + (written or 0) + (read or 0)
    completion = completion or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=read or 0,
        cache_creation_tokens=written or 0,
    )


def gemini_usage(metadata: Mapping[str, Any]) -> Usage | None:
    """Gemini's ``usageMetadata``, mapped as Google bills it.

    ``promptTokenCount`` includes the cached content (``cachedContentTokenCount``); the
    prompts of tools the model ran (``toolUsePromptTokenCount``: search results, code
    output) are input too. ``candidatesTokenCount`` excludes thoughts
    (``thoughtsTokenCount``), which are billed as output: the completion is their sum, the
    thoughts its reasoning tokens. Audio comes from the per-modality details; cached audio
    is counted as cached, not again as audio.
    """
    prompt = _count(metadata.get("promptTokenCount"))
    candidates = _count(metadata.get("candidatesTokenCount"))
    thoughts = _count(metadata.get("thoughtsTokenCount"))
    tools = _count(metadata.get("toolUsePromptTokenCount"))
    total = _count(metadata.get("totalTokenCount"))
    if prompt is None and candidates is None and thoughts is None and total is None:
        return None
    prompt = (prompt or 0) + (tools or 0)
    completion = (candidates or 0) + (thoughts or 0)
    audio_in = _modality(metadata, "promptTokensDetails", "AUDIO") + _modality(
        metadata, "toolUsePromptTokensDetails", "AUDIO"
    )
    total, repaired = _total(prompt, completion, total)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=_count(metadata.get("cachedContentTokenCount")) or 0,
        reasoning_tokens=thoughts or 0,
        prompt_audio_tokens=max(audio_in - _modality(metadata, "cacheTokensDetails", "AUDIO"), 0),
        completion_audio_tokens=_modality(metadata, "candidatesTokensDetails", "AUDIO"),
        repaired=repaired,
    )


def _modality(metadata: Mapping[str, Any], details_key: str, modality: str) -> int:
    """The tokens of one modality in a list of ``{"modality", "tokenCount"}`` details."""
    details = metadata.get(details_key)
    if not isinstance(details, list):
        return 0
    return sum(
        _count(item.get("tokenCount")) or 0
        for item in details
        if isinstance(item, Mapping) and item.get("modality") == modality
    )


def gemini_texts(content: object) -> list[str]:
    """What a Gemini ``Content`` generated: its parts' text (thought summaries included) and
    function calls (name, then arguments as JSON), for a local count."""
    if not isinstance(content, Mapping):
        return []
    parts = content.get("parts")
    texts: list[str] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, Mapping):
            continue
        text = part.get("text")
        if isinstance(text, str) and text:
            texts.append(text)
        call = part.get("functionCall")
        if isinstance(call, Mapping):
            name = call.get("name")
            if isinstance(name, str):
                texts.append(name)
            if call.get("args") is not None:
                texts.append(orjson.dumps(call["args"]).decode())
    return texts
