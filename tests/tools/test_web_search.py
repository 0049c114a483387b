"""web_search against local fakes of SearxNG, Brave Search and Tavily."""

from __future__ import annotations

import json

import pytest

from tests.fakes.providers import BRAVE_KEY, TAVILY_KEY
from tools.registry import ToolContext, registered_tools, tool_invoke

CTX = ToolContext("t", 1)
NONE = {"WEB_SEARCH_PROVIDER": "", "SEARXNG_URL": "", "BRAVE_API_KEY": "", "TAVILY_API_KEY": ""}


async def search(query: str, **extra):
    return await tool_invoke("web_search", json.dumps({"query": query, **extra}), CTX)


@pytest.fixture
def searxng(knobs, fake_services):
    knobs(NONE, SEARXNG_URL=f"{fake_services.url}/searxng")
    return fake_services


async def test_searxng_results_are_normalised_to_title_url_and_snippet(searxng):
    result = await search("red pandas", max_results=3)

    assert result.ok, result.content
    body = json.loads(result.content)
    assert body["provider"] == "searxng"
    assert body["results"][0] == {"title": "Result 1 for red pandas", "url": "https://example.org/1?q=red+pandas",
                                  "snippet": "Snippet 1 about red pandas & more"}
    assert len(body["results"]) == 3
    assert searxng.requests[-1]["query"] == {"q": "red pandas", "format": "json", "pageno": "1"}


async def test_brave_is_called_with_its_subscription_token(knobs, fake_services):
    knobs(NONE, WEB_SEARCH_PROVIDER="brave", BRAVE_API_KEY=BRAVE_KEY,
          BRAVE_URL=f"{fake_services.url}/brave/res/v1/web/search")

    result = await search("otters", max_results=2)

    body = json.loads(result.content)
    assert body["provider"] == "brave"
    assert [r["title"] for r in body["results"]] == ["Result 1 for otters", "Result 2 for otters"]
    assert body["results"][0]["snippet"] == "Snippet 1 about otters & more"  # <strong> and &amp; cleaned


async def test_tavily_is_picked_when_it_is_the_only_provider_configured(knobs, fake_services):
    knobs(NONE, TAVILY_API_KEY=TAVILY_KEY, TAVILY_URL=f"{fake_services.url}/tavily/search")

    result = await search("wombats", max_results=4)

    body = json.loads(result.content)
    assert body["provider"] == "tavily"
    assert len(body["results"]) == 4 and body["results"][3]["url"].startswith("https://example.org/4")


async def test_a_rejected_key_or_a_provider_error_is_a_failed_result(knobs, fake_services):
    knobs(NONE, WEB_SEARCH_PROVIDER="brave", BRAVE_API_KEY="wrong",
          BRAVE_URL=f"{fake_services.url}/brave/res/v1/web/search")
    rejected = await search("otters")
    knobs(NONE, SEARXNG_URL=f"{fake_services.url}/searxng")
    broken = await search("explode")

    assert (rejected.ok, rejected.content) == (False, "error: the brave search provider answered HTTP 401")
    assert (broken.ok, broken.content) == (False, "error: the searxng search provider answered HTTP 500")


async def test_without_a_provider_the_tool_is_unavailable_and_says_why(knobs):
    knobs(NONE)

    result = await search("anything")

    assert not result.ok
    assert "no web search provider is configured" in result.content
    assert "MAGEAGENT_SEARXNG_URL" in registered_tools()["web_search"].unavailable_reason()


def test_a_provider_selected_without_its_key_or_unknown_is_unavailable(knobs):
    knobs(NONE, WEB_SEARCH_PROVIDER="tavily")
    unconfigured = registered_tools()["web_search"].unavailable_reason()
    knobs(NONE, WEB_SEARCH_PROVIDER="altavista")
    unknown = registered_tools()["web_search"].unavailable_reason()

    assert unconfigured == "the tavily web search provider is selected but not configured"
    assert unknown.startswith("unknown web search provider 'altavista'")


@pytest.fixture(scope="module")
def verbose_searxng():
    """A SearxNG whose results carry long tracking URLs and the longest snippets kept."""
    from aiohttp import web

    from tests.fakes.server import FakeServer

    async def results(request: web.Request) -> web.Response:
        return web.json_response({"results": [
            {"title": f"Result {i}", "url": f"https://example.org/{i}?utm=" + "x" * 1500,
             "content": f"Snippet {i} " + "<b>word</b> " * 300} for i in range(10)]})

    app = web.Application()
    app.router.add_get("/search", results)
    server = FakeServer(app).start()
    yield server
    server.stop()


async def test_results_longer_than_the_model_may_get_stay_valid_json_and_say_so(knobs, verbose_searxng):
    knobs(NONE, SEARXNG_URL=verbose_searxng.url, TOOL_OUTPUT_MAX_CHARS=20_000)

    result = await search("long pages", max_results=10)

    assert result.ok and len(result.content) <= 20_000
    body = json.loads(result.content)
    assert body["truncated"] is True and body["query"] == "long pages"
    assert 0 < len(body["results"]) < 10
    assert [r["title"] for r in body["results"]] == [f"Result {i}" for i in range(len(body["results"]))]


async def test_results_that_fit_are_not_marked_truncated(searxng):
    body = json.loads((await search("red pandas", max_results=3)).content)

    assert "truncated" not in body
