"""web_search: one tool, several providers (SearxNG's JSON API, Brave Search, Tavily),
chosen by MAGEAGENT_WEB_SEARCH_PROVIDER or, when unset, the first one configured. A
dotted path there names a custom provider class. Results are title / url / snippet."""

from __future__ import annotations

import html
import re
from typing import Any, ClassVar

import httpx
from django.utils.module_loading import import_string
from pydantic import BaseModel, ConfigDict, Field

from tools.conf import knob
from tools.registry import Tool, ToolContext, ToolError, json_fit_list


def _plain(text: Any) -> str:
    """Providers mark matches with HTML (<strong>): keep the words only."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", str(text or ""))).split())


def _hit(title: Any, url: Any, snippet: Any) -> dict[str, str]:
    return {"title": _plain(title), "url": str(url or ""), "snippet": _plain(snippet)[:1000]}


class SearchProvider:
    name: ClassVar[str]

    @classmethod
    def configured(cls) -> bool:
        raise NotImplementedError

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[dict[str, str]]:
        raise NotImplementedError


class SearxngProvider(SearchProvider):
    name = "searxng"

    @classmethod
    def configured(cls) -> bool:
        return bool(knob("SEARXNG_URL"))

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[dict[str, str]]:
        base = knob("SEARXNG_URL").rstrip("/")
        response = await client.get(f"{base}/search", params={"q": query, "format": "json", "pageno": 1})
        response.raise_for_status()
        return [_hit(r.get("title"), r.get("url"), r.get("content")) for r in response.json().get("results", [])]


class BraveProvider(SearchProvider):
    name = "brave"

    @classmethod
    def configured(cls) -> bool:
        return bool(knob("BRAVE_API_KEY"))

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[dict[str, str]]:
        response = await client.get(knob("BRAVE_URL"), params={"q": query, "count": count},
                                    headers={"X-Subscription-Token": knob("BRAVE_API_KEY"),
                                             "Accept": "application/json"})
        response.raise_for_status()
        results = (response.json().get("web") or {}).get("results", [])
        return [_hit(r.get("title"), r.get("url"), r.get("description")) for r in results]


class TavilyProvider(SearchProvider):
    name = "tavily"

    @classmethod
    def configured(cls) -> bool:
        return bool(knob("TAVILY_API_KEY"))

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[dict[str, str]]:
        response = await client.post(knob("TAVILY_URL"), json={"query": query, "max_results": count},
                                     headers={"Authorization": f"Bearer {knob('TAVILY_API_KEY')}"})
        response.raise_for_status()
        return [_hit(r.get("title"), r.get("url"), r.get("content")) for r in response.json().get("results", [])]


PROVIDERS: dict[str, type[SearchProvider]] = {p.name: p for p in (SearxngProvider, BraveProvider, TavilyProvider)}


def provider_class() -> type[SearchProvider] | None:
    chosen = knob("WEB_SEARCH_PROVIDER").strip()
    if not chosen:
        return next((p for p in PROVIDERS.values() if p.configured()), None)
    return PROVIDERS.get(chosen.lower()) or import_string(chosen)


class WebSearchArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=400, description="The search query")
    max_results: int = Field(default=5, ge=1, le=10, description="How many results to return")


class WebSearchTool(Tool):
    name = "web_search"
    description = "Search the web. Returns results with title, url and snippet."
    Arguments = WebSearchArguments

    @property
    def timeout_s(self) -> float:  # type: ignore[override]
        return knob("WEB_SEARCH_TIMEOUT_S") + 5.0

    def unavailable_reason(self) -> str | None:
        chosen = knob("WEB_SEARCH_PROVIDER").strip()
        if chosen and "." not in chosen and chosen.lower() not in PROVIDERS:
            return f"unknown web search provider {chosen!r} (one of {', '.join(PROVIDERS)}, or a dotted path)"
        try:
            provider = provider_class()
        except ImportError as exc:
            return f"the web search provider {chosen!r} cannot be imported: {exc}"
        if provider is None:
            return ("no web search provider is configured (set MAGEAGENT_SEARXNG_URL, BRAVE_API_KEY or "
                    "TAVILY_API_KEY)")
        if not provider.configured():
            return f"the {provider.name} web search provider is selected but not configured"
        return None

    async def run(self, args: WebSearchArguments, ctx: ToolContext) -> str:
        provider = provider_class()
        assert provider is not None
        try:
            async with httpx.AsyncClient(timeout=knob("WEB_SEARCH_TIMEOUT_S"),
                                         follow_redirects=False) as client:
                hits = await provider().search(client, args.query, args.max_results)
        except httpx.HTTPStatusError as exc:
            raise ToolError(f"the {provider.name} search provider answered HTTP {exc.response.status_code}") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise ToolError(f"the {provider.name} search provider failed: {type(exc).__name__}: {exc}") from None
        # Titles and URLs are the provider's and unbounded: fewer results, not cut JSON.
        return json_fit_list({"provider": provider.name, "query": args.query, "results": hits[:args.max_results]},
                             "results", shorten="snippet")
