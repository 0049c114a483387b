"""Fake third-party services, faithful to the parts of their protocols MageAgent uses:
SearxNG's JSON search API, Brave Search, Tavily, a GraphRAG service, and a web site with
documents, redirects, large and slow responses (for the SSRF-guarded fetcher)."""

from __future__ import annotations

import asyncio

from aiohttp import web

FILES = web.AppKey("files", dict)
BRAVE_KEY = "brave-test-key"
TAVILY_KEY = "tvly-test-key"
GRAPHRAG_KEY = "graphrag-test-key"


def _hits(query: str, n: int) -> list[tuple[str, str, str]]:
    return [(f"Result {i} for {query}", f"https://example.org/{i}?q={query.replace(' ', '+')}",
             f"Snippet {i} about <strong>{query}</strong> &amp; more") for i in range(1, n + 1)]


async def searxng(request: web.Request) -> web.Response:
    if request.query.get("format") != "json":
        return web.Response(status=403, text="json format not enabled")  # what SearxNG answers
    query = request.query.get("q", "")
    if query == "explode":
        return web.Response(status=500, text="engine error")
    results = [{"title": t, "url": u, "content": s, "engine": "fake"} for t, u, s in _hits(query, 8)]
    return web.json_response({"query": query, "number_of_results": len(results), "results": results})


async def brave(request: web.Request) -> web.Response:
    if request.headers.get("X-Subscription-Token") != BRAVE_KEY:
        return web.json_response({"type": "ErrorResponse", "error": {"code": "SUBSCRIPTION_TOKEN_INVALID"}},
                                 status=401)
    query, count = request.query.get("q", ""), int(request.query.get("count", "20"))
    results = [{"title": t, "url": u, "description": s, "type": "search_result"} for t, u, s in _hits(query, count)]
    return web.json_response({"type": "search", "query": {"original": query}, "web": {"results": results}})


async def tavily(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {TAVILY_KEY}":
        return web.json_response({"detail": {"error": "Unauthorized"}}, status=401)
    body = await request.json()
    results = [{"title": t, "url": u, "content": s, "score": 0.9}
               for t, u, s in _hits(body["query"], int(body.get("max_results", 5)))]
    return web.json_response({"query": body["query"], "results": results, "response_time": 0.1})


async def graphrag(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {GRAPHRAG_KEY}":
        return web.json_response({"error": "unauthorized"}, status=401)
    body = await request.json()
    return web.json_response({"results": [
        {"document_id": "ext-1", "title": f"External answer for {body['company_id']}",
         "content": f"GraphRAG says: {body['query']}", "score": 0.87}]})


HTML = b"<html><head><title>Fake page</title><script>var secret = 1;</script></head>" \
       b"<body><h1>Quarterly report</h1><p>Revenue grew by 12 percent.</p></body></html>"


async def page(request: web.Request) -> web.Response:
    return web.Response(body=HTML, content_type="text/html")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query["to"])


async def big(request: web.Request) -> web.StreamResponse:
    # No Content-Length: the limit must hold while streaming.
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(int(request.query.get("mb", "4"))):
        await response.write(b"x" * (1024 * 1024))
    await response.write_eof()
    return response


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "10")))
    return web.Response(text="finally")


async def served(request: web.Request) -> web.Response:
    """Whatever a test put in app[FILES] under that name: (bytes, content type)."""
    entry = request.app[FILES].get(request.match_info["name"])
    if entry is None:
        raise web.HTTPNotFound()
    return web.Response(body=entry[0], content_type=entry[1])


async def secret(request: web.Request) -> web.Response:
    return web.Response(text="internal secret")


def providers_app() -> web.Application:
    app = web.Application()
    app[FILES] = {}
    app.router.add_get("/searxng/search", searxng)
    app.router.add_get("/brave/res/v1/web/search", brave)
    app.router.add_post("/tavily/search", tavily)
    app.router.add_post("/graphrag/query", graphrag)
    app.router.add_get("/page.html", page)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/secret", secret)
    app.router.add_get("/files/{name}", served)
    return app
