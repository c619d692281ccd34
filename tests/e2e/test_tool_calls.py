"""Steps, tool calls and errors of an agent run, from the official SDKs to the session tree.

Each record counts the tool calls its answer asked for (streamed or not) and the tool results
its request sent back; the session, its path nodes and the usage summary add up the steps,
tool calls, errors and latency.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import RunningProxy
from tests.support.fake_upstream import FakeUpstream

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} of a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
    for name in ("get_weather", "get_time")
]
QUESTION: Any = {"role": "user", "content": "Weather and time in Paris?"}


def _headers(path: str, scenario: str = "parallel-tool-calls") -> dict[str, str]:
    return {"X-Session-Id": "agent-9", "X-Session-Path": path, "X-Fake-Scenario": scenario}


async def _streamed_calls(
    proxy: RunningProxy, messages: Any, headers: dict[str, str], **options: Any
) -> list[str]:
    """The names of the tool calls a streamed answer asked for, as the SDK assembled them."""
    names: dict[int, str] = {}
    async with await proxy.sdk.chat.completions.create(
        model="gpt-4o", messages=messages, tools=TOOLS, stream=True, extra_headers=headers,
        **options,
    ) as chunks:  # fmt: skip
        async for chunk in chunks:
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or []:
                    if call.function and call.function.name:
                        names[call.index] = call.function.name
    return [names[index] for index in sorted(names)]


async def test_an_agent_run_counts_its_steps_tool_calls_and_errors(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    planned = await proxy.sdk.chat.completions.create(
        model="gpt-4o", messages=[QUESTION], tools=TOOLS, extra_headers=_headers("/plan")
    )
    calls = planned.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    history: Any = [
        QUESTION,
        planned.choices[0].message.model_dump(exclude_none=True),
        *({"role": "tool", "tool_call_id": call.id, "content": "14 C"} for call in calls),
    ]
    # Streamed, the proxy asking for usage; then without usage at all (counted locally).
    assert await _streamed_calls(proxy, history, _headers("/plan/act")) == [
        "get_weather",
        "get_time",
    ]
    no_usage = _headers("/plan/act", "tool-calls,no-usage")
    assert await _streamed_calls(proxy, history, no_usage) == ["get_weather"]
    with pytest.raises(openai.InternalServerError):
        await proxy.sdk.chat.completions.create(
            model="gpt-4o", messages=history, extra_headers=_headers("/answer", "error-500")
        )

    records = {r["id"]: r for r in await proxy.records(4, session_id="agent-9")}
    by_step = sorted(records.values(), key=lambda r: r["id"])
    assert [(r["stream"], r["tool_calls"], r["tool_results"]) for r in by_step] == [
        (False, 2, 0),
        (True, 2, 2),
        (True, 1, 2),
        (False, 0, 2),
    ]
    assert by_step[2]["usage_source"] == "estimated"

    answer = await proxy.api.get("/usage/sessions/agent-9")
    assert answer.status_code == 200, answer.text
    session = answer.json()
    assert (session["requests"], session["tool_calls"], session["errors"]) == (4, 5, 1)
    assert session["error_rate"] == 0.25
    assert session["latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in by_step))
    tree = session["tree"]
    answer_node, plan = sorted(tree["children"], key=lambda node: node["path"])
    assert plan["path"] == "/plan"
    assert (plan["own"]["requests"], plan["own"]["tool_calls"]) == (1, 2)
    assert (plan["total"]["requests"], plan["total"]["tool_calls"]) == (3, 5)
    assert plan["total"]["latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in by_step[:3]))
    (act,) = plan["children"]
    assert (act["own"]["tool_calls"], act["own"]["errors"]) == (3, 0)
    assert (answer_node["path"], answer_node["own"]["errors"]) == ("/answer", 1)
    assert answer_node["own"]["error_rate"] == 1.0
    assert tree["total"]["error_rate"] == 0.25

    listed = (await proxy.api.get("/usage/sessions")).json()["data"]
    assert [(s["session_id"], s["tool_calls"], s["errors"]) for s in listed] == [("agent-9", 5, 1)]
    summary = (await proxy.api.get("/usage/summary", params={"group_by": "session"})).json()
    (group,) = summary["data"]
    assert (group["key"], group["requests"], group["tool_calls"]) == ("agent-9", 4, 5)
    assert (group["errors"], group["error_rate"]) == (1, 0.25)


CLAUDE_TOOLS: Any = [
    {"name": name, "description": f"{name} of a city",
     "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}
    for name in ("get_weather", "get_time")
]  # fmt: skip


async def test_anthropic_tool_use_is_counted_streamed_or_not(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    async with anthropic.AsyncAnthropic(
        base_url=proxy.url, api_key="sk-ant-test", max_retries=0
    ) as claude:
        first = await claude.messages.create(
            model="claude-haiku-4-5", max_tokens=200, messages=[question], tools=CLAUDE_TOOLS,
            extra_headers=_headers("/claude", "tool-calls"),
        )  # fmt: skip
        (use,) = [block for block in first.content if block.type == "tool_use"]
        history: Any = [
            question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "14 C"}
            ]},
        ]  # fmt: skip
        async with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=200, messages=history, tools=CLAUDE_TOOLS,
            extra_headers=_headers("/claude"),
        ) as stream:  # fmt: skip
            final = await stream.get_final_message()
    assert [b.name for b in final.content if b.type == "tool_use"] == ["get_weather", "get_time"]

    records = sorted(await proxy.records(2, session_id="agent-9"), key=lambda r: r["id"])
    assert [(r["stream"], r["tool_calls"], r["tool_results"]) for r in records] == [
        (False, 1, 0),
        (True, 2, 1),
    ]
    session = (await proxy.api.get("/usage/sessions/agent-9")).json()
    (node,) = session["tree"]["children"]
    assert (node["path"], node["own"]["requests"], node["own"]["tool_calls"]) == ("/claude", 2, 3)
