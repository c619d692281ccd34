"""How many output tokens a model may write at most, from the vendored model table.

``proxy/data/model_limits.json`` is made by ``scripts/vendor_model_limits.py`` from LiteLLM's
model table. Names are tried as given, without a routing prefix (``openai/gpt-4o``), and
without a release date (``gpt-4o-2024-11-20``, ``claude-sonnet-4-5-20250929``).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "data" / "model_limits.json"
_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


@functools.cache
def _table() -> dict[str, int]:
    document = json.loads(TABLE.read_text())
    limits: dict[str, int] = document["max_output_tokens"]
    return limits


def max_output_tokens(model: str) -> int | None:
    """The model's most output tokens per request, or None when the table does not know it."""
    table = _table()
    for name in _names(model):
        found = table.get(name)
        if found is not None:
            return found
    return None


def _names(model: str) -> list[str]:
    names = [model, model.rsplit("/", 1)[-1]]
    names += [_DATED.sub("", name) for name in names]
    return names
