"""Session paths, names and trace context, from the openai SDK to the session's tree.

An agent run tagged with ``X-Session-Path`` per step: the proxy keeps path, name and the
caller's ``traceparent`` on each record, forwards ``traceparent`` unchanged and not the
tags, and ``GET /usage/sessions/{id}`` answers the tree with own and rolled-up totals.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.e2e.conftest import RunningProxy
from tests.support.fake_upstream import FakeUpstream, FakeUsage

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{CALLER_SPAN}-01"

# (path, requests, scenario): what one agent run did, step by step.
STEPS = [
    (None, 1, ""),  # the run's opening call, without a path
    ("/plan", 1, ""),
    ("/plan/search/1", 2, ""),
    ("/plan/search/2", 1, ""),
    ("/answer", 1, ""),
]


async def _call(proxy: RunningProxy, headers: dict[str, str], stream: bool = False) -> None:
    messages: Any = [{"role": "user", "content": "Plan a trip to Lisbon"}]
    if stream:
        async with await proxy.sdk.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, extra_headers=headers
        ) as chunks:
            async for _ in chunks:
                pass
    else:
        await proxy.sdk.chat.completions.create(
            model="gpt-4o-mini", messages=messages, extra_headers=headers
        )


async def test_a_session_answers_its_path_tree(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = FakeUsage(prompt_tokens=1000, completion_tokens=100)
    made = 0
    for path, count, _ in STEPS:
        for index in range(count):
            headers = {"X-Session-Id": "trip-7", "traceparent": TRACEPARENT}
            if path is not None:
                headers["X-Session-Path"] = path
                headers["Helicone-Session-Name"] = "Trip planner"
            await _call(proxy, headers, stream=index == 1)
            made += 1
    records = await proxy.records(made, session_id="trip-7")

    # Tags stay home; the trace context goes on, unchanged.
    for received in fake_upstream.requests:
        assert "x-session-path" not in received.headers
        assert "helicone-session-name" not in received.headers
        assert received.headers["traceparent"] == TRACEPARENT
    by_path = {r["session_path"]: r for r in records}
    assert set(by_path) == {None, "/plan", "/plan/search/1", "/plan/search/2", "/answer"}
    assert by_path["/plan"]["session_name"] == "Trip planner"
    assert by_path[None]["session_name"] is None
    assert {(r["trace_id"], r["span_id"]) for r in records} == {(TRACE, CALLER_SPAN)}

    answer = await proxy.api.get("/usage/sessions/trip-7")
    assert answer.status_code == 200, answer.text
    session = answer.json()
    assert session["name"] == "Trip planner"
    assert (session["requests"], session["errors"], session["error_rate"]) == (6, 0, 0.0)
    assert session["latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in records))
    tree = session["tree"]
    assert tree["path"] == "/"
    assert tree["own"]["requests"] == 1
    assert tree["total"]["requests"] == 6
    assert tree["total"]["cost_usd"] == session["cost_usd"]
    cost = {r["session_path"]: Decimal(r["cost_usd"]) for r in records}
    plan, answer_node = tree["children"]  # /plan holds four requests: the costliest first
    assert (plan["path"], answer_node["path"]) == ("/plan", "/answer")
    assert plan["own"]["requests"] == 1
    assert plan["total"]["requests"] == 4
    assert plan["total"]["total_tokens"] == 4 * 1100
    search = plan["children"][0]
    assert search["path"] == "/plan/search"
    assert search["own"]["requests"] == 0
    assert [c["path"] for c in search["children"]] == ["/plan/search/1", "/plan/search/2"]
    assert Decimal(search["children"][1]["total"]["cost_usd"]) == cost["/plan/search/2"]
    assert Decimal(answer_node["own"]["cost_usd"]) == cost["/answer"]


async def test_failed_steps_count_as_errors_of_their_node(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    headers = {"X-Session-Id": "flaky", "X-Session-Path": "/tool/weather"}
    await _call(proxy, headers)
    with pytest.raises(openai.InternalServerError):
        await proxy.sdk.with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={**headers, "x-fake-scenario": "error-500"},
        )
    await proxy.records(2, session_id="flaky")
    session = (await proxy.api.get("/usage/sessions/flaky")).json()
    assert (session["requests"], session["errors"], session["error_rate"]) == (2, 1, 0.5)
    (tool,) = session["tree"]["children"]
    assert tool["path"] == "/tool"
    (weather,) = tool["children"]
    assert (weather["own"]["requests"], weather["own"]["errors"]) == (2, 1)
    assert weather["own"]["error_rate"] == 0.5


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Session-Path", "/plan//search"),
        ("X-Session-Path", "/plan/"),
        ("Helicone-Session-Path", "p" * 300),
        ("X-Session-Name", "n" * 257),
    ],
)
async def test_a_bad_path_or_name_is_an_openai_error_naming_the_header(
    sqlite_proxy: RunningProxy, fake_upstream: FakeUpstream, header: str, value: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sqlite_proxy.sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Session-Id": "s", header: value},
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == header.lower()
    assert error["type"] == "invalid_request_error"
    assert fake_upstream.requests == []
