"""Pure counting of tool calls: those a model asked for in its answer, and the tool results
a request sends back.

An agent's step is one request; its tool round is the calls the answer asks for (chat
``tool_calls`` and the legacy ``function_call``, Responses ``function_call`` and
``custom_tool_call`` items, Anthropic ``tool_use`` blocks, Gemini ``functionCall`` parts) and
the results the next request carries (chat ``tool`` messages, Responses
``function_call_output`` items, Anthropic ``tool_result`` blocks, Gemini
``functionResponse`` parts). Tools the provider runs itself (web search, code execution) are
not the client's tool calls and are not counted. Odd input counts as nothing, never raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_RESPONSES_CALLS = frozenset({"function_call", "custom_tool_call"})
_RESPONSES_RESULTS = frozenset({"function_call_output", "custom_tool_call_output"})


def tool_calls_in(payload: Mapping[str, Any]) -> int:
    """The tool calls a non-streamed answer asks for, whatever the API."""
    # Runs on every buffered answer: plain loops over dicts, the chat shape first.
    choices = payload.get("choices")
    if isinstance(choices, list):
        count = 0
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                calls = message.get("tool_calls")
                if isinstance(calls, list):
                    count += sum(isinstance(call, dict) for call in calls)
                count += isinstance(message.get("function_call"), dict)
        return count
    count = sum(item.get("type") in _RESPONSES_CALLS for item in _dicts(payload.get("output")))
    if payload.get("type") == "message":
        count += sum(block.get("type") == "tool_use" for block in _dicts(payload.get("content")))
    for candidate in _dicts(payload.get("candidates")):
        count += gemini_calls(candidate.get("content"))
    return count


def tool_results_in(body: Mapping[str, Any] | None) -> int:
    """The tool results a request body sends back to the model, whatever the API."""
    if body is None:
        return 0
    count = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        # Runs on every request: plain loops, and a content list read only when it is one.
        for message in messages:
            if not isinstance(message, dict):
                continue
            if message.get("role") in ("tool", "function"):
                count += 1
                continue
            content = message.get("content")
            if isinstance(content, list):
                count += sum(
                    isinstance(block, dict) and block.get("type") == "tool_result"
                    for block in content
                )
        return count
    count = sum(item.get("type") in _RESPONSES_RESULTS for item in _dicts(body.get("input")))
    for content in _dicts(body.get("contents")):
        count += sum("functionResponse" in part for part in _dicts(content.get("parts")))
    return count


def gemini_calls(content: object) -> int:
    """The ``functionCall`` parts of one Gemini ``Content``."""
    if not isinstance(content, Mapping):
        return 0
    return sum(
        isinstance(part.get("functionCall"), Mapping) for part in _dicts(content.get("parts"))
    )


def may_start_tool_call(raw: bytes) -> bool:
    """Whether one raw stream event may start a tool call, so the tee must read it now.

    Every start names its tool: a JSON key ``"name"``, which text inside a JSON string cannot
    fake (its quotes would be escaped). Plain text events fail the first test, one scan.
    """
    if b'"name"' not in raw:
        return False
    return (
        b'"tool_calls"' in raw
        or b'"tool_use"' in raw
        or b'"functionCall"' in raw
        or b'"function_call"' in raw
    )


class StreamToolCalls:
    """The tool calls of a stream, counted from its parsed events.

    Chat streams spread one call over many deltas with the same ``index``: a call is counted
    once per choice and index, at the deltas that name its function (the ones the tee reads
    eagerly, see ``may_start_tool_call``), so reading every event or only those gives the same
    count. A delta without an index counts as a call of its own. Responses streams end with the
    whole response, whose output is counted; Anthropic streams open each ``tool_use`` block
    with a ``content_block_start``; Gemini sends each ``functionCall`` whole.
    """

    __slots__ = ("_chat", "_responses", "_whole")

    def __init__(self) -> None:
        self._chat: set[tuple[object, object]] = set()
        self._responses = 0
        self._whole = 0

    @property
    def count(self) -> int:
        return len(self._chat) + self._responses + self._whole

    def chat_call(self, choice_index: object, call: Mapping[str, Any]) -> None:
        """One entry of a delta's ``tool_calls``."""
        function = call.get("function")
        if not isinstance(function, Mapping) or "name" not in function:
            return
        index = call.get("index")
        if type(index) is int:
            self._chat.add((choice_index, index))
        else:
            self._whole += 1

    def chat_function_call(self, choice_index: object, function: object) -> None:
        """A delta's legacy ``function_call``: one call per choice, named in its first delta."""
        if isinstance(function, Mapping) and "name" in function:
            self._chat.add((choice_index, "function_call"))

    def responses_output(self, output: object) -> None:
        """The ``output`` of a Responses object as it stands (the last one seen wins)."""
        if isinstance(output, list):
            self._responses = sum(item.get("type") in _RESPONSES_CALLS for item in _dicts(output))

    def anthropic_block(self, block: object) -> None:
        """The ``content_block`` of a ``content_block_start`` event."""
        if isinstance(block, Mapping) and block.get("type") == "tool_use":
            self._whole += 1

    def gemini_content(self, content: object) -> None:
        """One candidate's ``content`` in a Gemini stream chunk."""
        self._whole += gemini_calls(content)


def _dicts(value: object) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, list):
        return (item for item in value if isinstance(item, Mapping))
    return ()
