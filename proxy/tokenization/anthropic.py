"""Anthropic Messages API (``/v1/messages``) prompt estimates: approximate by construction.

Claude 3 and later use a tokenizer Anthropic has not published, so no local count is exact.
The stand-in is the Claude 2 tokenizer, the last one Anthropic published (see
``proxy.tokenization.loading``): the vendor's own vocabulary of about the size reverse
engineering finds for Claude 3, and one that counts a little above the OpenAI vocabularies on
English, which errs on the side Anthropic's newer tokenizers lean to. Messages are wrapped the
way Claude 2 prompts were (``\\n\\nHuman: `` / ``\\n\\nAssistant: ``). With custom tools, the
tool-use system prompt Anthropic documents for current models is added (346 tokens for
``auto`` / ``none``, 313 for ``any`` / ``tool``) plus each definition as JSON. The
provider's reported usage always wins over this estimate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from proxy.tokenization.openai_format import Tally

_TOOLS_SYSTEM_AUTO: Final = 346
_TOOLS_SYSTEM_FORCED: Final = 313
_TURN_PREFIX: Final = {"user": "\n\nHuman: ", "assistant": "\n\nAssistant: "}
_REPLY_PRIMING: Final = "\n\nAssistant:"
_BLOCK_KINDS: Final = {"image": "image", "document": "file", "redacted_thinking": "thinking"}


def messages_prompt(tally: Tally, body: Mapping[str, Any]) -> bool:
    """Add a Messages API request's prompt to ``tally``; False without ``messages``."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    system = body.get("system")
    if isinstance(system, str):
        tally.add(system)
    elif isinstance(system, list):
        _add_blocks(tally, system)
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        tally.add(_TURN_PREFIX.get(role if isinstance(role, str) else "", "\n\n"))
        content = message.get("content")
        if isinstance(content, str):
            tally.add(content)
        elif isinstance(content, list):
            _add_blocks(tally, content)
    tally.add(_REPLY_PRIMING)
    _add_tools(tally, body.get("tools"), body.get("tool_choice"))
    return True


def _add_blocks(tally: Tally, blocks: list[Any]) -> None:
    for block in blocks:
        if isinstance(block, str):
            tally.add(block)
        elif isinstance(block, Mapping):
            _add_block(tally, block)


def _add_block(tally: Tally, block: Mapping[str, Any]) -> None:
    kind = block.get("type")
    if kind in ("text", "thinking"):
        text = block.get(kind)
        tally.add(text if isinstance(text, str) else "")
    elif kind in ("tool_use", "server_tool_use"):
        name = block.get("name")
        tally.add(name if isinstance(name, str) else "")
        tally.add(json.dumps(block.get("input", {}), ensure_ascii=False))
    elif kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            tally.add(content)
        elif isinstance(content, list):
            _add_blocks(tally, content)
    elif kind == "document" and _is_text_source(block.get("source")):
        tally.add(block["source"]["data"])
    else:
        tally.exclude(_BLOCK_KINDS.get(str(kind), str(kind)))


def _is_text_source(source: Any) -> bool:
    return (
        isinstance(source, Mapping)
        and source.get("type") == "text"
        and isinstance(source.get("data"), str)
    )


def _add_tools(tally: Tally, tools: Any, choice: Any) -> None:
    custom = 0
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, Mapping):
            continue
        if tool.get("type") not in (None, "custom"):
            tally.exclude("tool")  # server and client tools Anthropic defines, e.g. web_search
            continue
        custom += 1
        definition = {k: tool.get(k) for k in ("name", "description", "input_schema")}
        tally.add(json.dumps(definition, ensure_ascii=False))
    if custom:
        forced = isinstance(choice, Mapping) and choice.get("type") in ("any", "tool")
        tally.tokens += _TOOLS_SYSTEM_FORCED if forced else _TOOLS_SYSTEM_AUTO
