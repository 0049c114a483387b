"""One round of the tool loop (tasks/runtime/pipeline.py's _run_tools) against real Redis:
what the task's event log and the model's next messages get."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from providers.llm import Deployment
from tasks import events
from tasks.runtime.pipeline import AttemptPlan, _run_tools
from tools.registry import ToolContext, ToolResult


def plan_for(*tool_names: str) -> AttemptPlan:
    return AttemptPlan(task_id=f"loop-{uuid.uuid4().hex}", attempt=1, owner=events.ANY_OWNER, messages=[],
                       deployment=Deployment(model="sim", provider="sim", litellm_model="openai/sim"),
                       start_events=[], tool_specs=[{"type": "function", "function": {"name": n}} for n in tool_names])


def call(name: str) -> dict[str, Any]:
    return {"id": f"call-{name}", "name": name, "arguments": "{}"}


async def logged(task_id: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await events.aread_after(task_id, 0) or []]


async def results_logged(task_id: str) -> list[str]:
    return [e["name"] for e in await logged(task_id) if e["type"] == "tool_result"]


@pytest.fixture
def tools(monkeypatch):
    """Tools by name: an async function (arguments, ctx) -> ToolResult."""
    registry: dict[str, Any] = {}

    async def invoke(name: str, arguments: str, ctx: ToolContext) -> ToolResult:
        return await registry[name](arguments, ctx)

    monkeypatch.setattr("tasks.runtime.pipeline.tool_invoke", invoke)
    return registry


async def test_a_quick_tools_result_is_logged_while_a_slow_one_still_runs(tools):
    plan = plan_for("slow", "quick")

    async def slow(arguments: str, ctx: ToolContext) -> ToolResult:
        for _ in range(200):  # gives up after ~10 s rather than hang when results wait for each other
            if "quick" in await results_logged(plan.task_id):
                return ToolResult(True, "saw the quick result go out first")
            await asyncio.sleep(0.05)
        return ToolResult(False, "the quick result was held back")

    async def quick(arguments: str, ctx: ToolContext) -> ToolResult:
        return ToolResult(True, "quick answer")

    tools.update(slow=slow, quick=quick)
    messages: list[dict[str, Any]] = []

    await _run_tools(plan, [call("slow"), call("quick")], messages)

    assert await results_logged(plan.task_id) == ["quick", "slow"]
    # The model still reads the results in the order it made the calls.
    assert [(m["tool_call_id"], m["content"]) for m in messages[1:]] == [
        ("call-slow", "saw the quick result go out first"), ("call-quick", "quick answer")]


async def test_the_text_streamed_before_the_calls_stays_in_the_models_history(tools):
    async def quick(arguments: str, ctx: ToolContext) -> ToolResult:
        return ToolResult(True, "42")

    tools.update(quick=quick)
    messages: list[dict[str, Any]] = []

    await _run_tools(plan_for("quick"), [call("quick")], messages, text="Let me compute that first.")

    assert messages[0]["role"] == "assistant"
    assert messages[0]["content"] == "Let me compute that first."
    assert messages[0]["tool_calls"][0]["function"]["name"] == "quick"


async def test_cancelling_the_round_stops_every_running_tool(tools):
    plan = plan_for("quick", "slow")
    stopped = asyncio.Event()

    async def slow(arguments: str, ctx: ToolContext) -> ToolResult:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()
        return ToolResult(True, "never")

    async def quick(arguments: str, ctx: ToolContext) -> ToolResult:
        return ToolResult(True, "done")

    tools.update(slow=slow, quick=quick)
    round_ = asyncio.ensure_future(_run_tools(plan, [call("quick"), call("slow")], []))
    for _ in range(200):
        if "quick" in await results_logged(plan.task_id):
            break
        await asyncio.sleep(0.05)

    round_.cancel()
    with pytest.raises(asyncio.CancelledError):
        await round_

    assert stopped.is_set()
    assert await results_logged(plan.task_id) == ["quick"]
