"""Gemini ``generateContent`` prompt estimates: approximate by construction.

Gemini's tokenizer is not published with the API (Gemma's open vocabulary is close, but under
its own license and not shipped here), so the stand-in is the default vocabulary, o200k_base:
a vocabulary of similar size trained on similar multilingual text. A ``tokenizers`` rule for
``gemini-*`` replaces it. The prompt is the text of ``systemInstruction`` and ``contents``,
function calls and results as JSON, and tool declarations as JSON; inline and file data
(images, audio, video, documents) are left out and named. The provider's reported usage
always wins over this estimate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from proxy.tokenization.openai_format import Tally


def contents_prompt(tally: Tally, body: Mapping[str, Any]) -> bool:
    """Add a ``generateContent`` request's prompt to ``tally``; False without ``contents``."""
    contents = body.get("contents")
    if not isinstance(contents, list):
        return False
    system = body.get("systemInstruction", body.get("system_instruction"))
    if isinstance(system, Mapping):
        _add_parts(tally, system.get("parts"))
    for content in contents:
        if isinstance(content, Mapping):
            _add_parts(tally, content.get("parts"))
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, Mapping):
            declared = tool.get("functionDeclarations", tool.get("function_declarations"))
            if declared is not None:
                tally.add(json.dumps(declared, ensure_ascii=False))
    return True


def _add_parts(tally: Tally, parts: object) -> None:
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, Mapping):
            continue
        text = part.get("text")
        if isinstance(text, str):
            tally.add(text)
        for key in ("functionCall", "functionResponse", "function_call", "function_response"):
            value = part.get(key)
            if isinstance(value, Mapping):
                tally.add(json.dumps(value, ensure_ascii=False))
        for key in ("inlineData", "fileData", "inline_data", "file_data"):
            data = part.get(key)
            if isinstance(data, Mapping):
                mime = data.get("mimeType", data.get("mime_type"))
                tally.exclude(_kind(mime if isinstance(mime, str) else ""))


def _kind(mime_type: str) -> str:
    major = mime_type.partition("/")[0]
    return major if major in ("image", "audio", "video") else "file"
