"""The registry: what /tools shows, what a task may request, and how a call can fail
without ever crashing the task."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from tools.registry import Tool, ToolContext, registered_tools, tool_invoke

API = "/mageagent/api/v1"
NO_SEARCH = {"WEB_SEARCH_PROVIDER": "", "SEARXNG_URL": "", "BRAVE_API_KEY": "", "TAVILY_API_KEY": ""}


class Text(BaseModel):
    text: str = ""


class SlowTool(Tool):
    name, description, Arguments, timeout_s = "slow", "sleeps", Text, 0.2

    async def run(self, args: Text, ctx: ToolContext) -> str:
        await asyncio.sleep(5)
        return "woke up"


class BoomTool(Tool):
    name, description, Arguments = "boom", "raises", Text

    async def run(self, args: Text, ctx: ToolContext) -> str:
        raise RuntimeError("kaboom")


class ChattyTool(Tool):
    name, description, Arguments = "chatty", "talks a lot", Text

    async def run(self, args: Text, ctx: ToolContext) -> str:
        return args.text * 100_000


@pytest.fixture
def test_tools(settings):
    settings.MAGEAGENT_TOOLS = [*settings.MAGEAGENT_TOOLS, *(f"{__name__}.{c.__name__}" for c in
                                                             (SlowTool, BoomTool, ChattyTool))]
    registered_tools.cache_clear()
    yield
    registered_tools.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_registry():
    registered_tools.cache_clear()
    yield
    registered_tools.cache_clear()


@pytest.mark.django_db
def test_get_tools_lists_the_four_built_in_tools_with_their_json_schema(api, alice, knobs):
    knobs(NO_SEARCH)

    response = api.get(f"{API}/tools", headers=alice.headers)

    assert response.status_code == 200
    tools = {t["name"]: t for t in response.json()["results"]}
    assert set(tools) == {"code_execution", "graphrag_search", "web_search", "file_processing"}
    assert tools["code_execution"]["parameters"]["properties"]["language"]["enum"] == ["python", "javascript", "bash"]
    assert tools["graphrag_search"]["parameters"]["required"] == ["query"]
    assert tools["graphrag_search"]["available"] is True
    assert tools["web_search"]["available"] is False
    assert "no web search provider is configured" in tools["web_search"]["unavailable_reason"]


@pytest.mark.django_db
def test_a_task_may_not_request_an_unknown_tool(api, alice):
    response = api.post(f"{API}/tasks", {"prompt": "hi", "tools": ["teleport"]}, format="json", headers=alice.headers)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["details"]["tools"] == ["teleport"]


@pytest.mark.django_db
def test_a_task_may_not_request_a_tool_whose_backend_is_not_configured(api, alice, knobs):
    knobs(NO_SEARCH)

    response = api.post(f"{API}/tasks", {"prompt": "hi", "tools": ["web_search"]}, format="json",
                        headers=alice.headers)

    assert response.status_code == 400
    assert "no web search provider" in response.json()["error"]["details"]["unavailable"]["web_search"]


async def test_invalid_arguments_come_back_as_a_failed_result():
    result = await tool_invoke("graphrag_search", '{"query": ""', ToolContext("t", 1))
    wrong = await tool_invoke("graphrag_search", json.dumps({"query": "x", "limit": 1000}), ToolContext("t", 1))

    assert not result.ok and "invalid arguments" in result.content
    assert not wrong.ok and "limit" in wrong.content


async def test_a_model_cannot_call_a_tool_its_task_did_not_request():
    ctx = ToolContext("t", 1, allowed_tools=frozenset({"web_search"}))

    result = await tool_invoke("code_execution", json.dumps({"language": "bash", "code": "id"}), ctx)

    assert not result.ok and result.content == "error: unknown tool 'code_execution'"


async def test_a_tool_that_times_out_or_raises_gives_a_failed_result(test_tools):
    slow = await tool_invoke("slow", "{}", ToolContext("t", 1))
    boom = await tool_invoke("boom", "{}", ToolContext("t", 1))

    assert (slow.ok, slow.content) == (False, "error: slow timed out after 0.2 s")
    assert (boom.ok, boom.content) == (False, "error: RuntimeError: kaboom")


async def test_huge_tool_output_is_cut_to_the_configured_size(test_tools, knobs):
    knobs(TOOL_OUTPUT_MAX_CHARS=1000)

    result = await tool_invoke("chatty", json.dumps({"text": "ab"}), ToolContext("t", 1))

    assert result.ok
    assert result.content.startswith("ab" * 500)
    assert result.content.endswith("[output truncated: 199000 more characters]")
