"""The usage API's orjson response: the JSON Starlette would send, and a fallback for what
orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from proxy.api.json_response import FastJSONResponse

BODIES: list[Any] = [
    {"group_by": "user", "data": [{"key": "ann", "requests": 3, "cost_usd": "0.00000705",
                                   "error_rate": 0.3333333333333333}]},
    {"data": [{"key": None, "properties": {"team": "ünï", "n": 7}, "stream": True}]},
    {"data": [], "next_cursor": None},
]  # fmt: skip


@pytest.mark.parametrize("body", BODIES)
def test_the_same_json_as_starlette(body: Any) -> None:
    assert FastJSONResponse(body).body == JSONResponse(body).body


def test_what_orjson_refuses_is_rendered_as_starlette_would() -> None:
    # A property imported by SQL may hold an integer beyond 64 bits.
    body = {"data": [{"properties": {"big": 2**70}}]}
    rendered = FastJSONResponse(body).body
    assert rendered == JSONResponse(body).body
    assert json.loads(rendered)["data"][0]["properties"]["big"] == 2**70
