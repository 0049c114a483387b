"""graphrag_search and context.useGraphRAG's retrieval: the task's company's knowledge
base only, or an external GraphRAG service when one is configured."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from asgiref.sync import sync_to_async
from django.db import connections

from mageagent.errors import Unavailable
from tests.fakes.providers import GRAPHRAG_KEY
from tests.fakes.server import FakeServer
from tools.knowledge import knowledge_retrieve
from tools.registry import ToolContext, tool_invoke
from tools.services import document_create

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn in a worker thread that gives its connection back (or the test DB cannot be dropped)."""
    def closing(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()
    return sync_to_async(closing, thread_sensitive=False)


async def graphrag(ctx: ToolContext, query: str, **extra) -> tuple[bool, dict | str]:
    result = await tool_invoke("graphrag_search", json.dumps({"query": query, **extra}), ctx)
    return result.ok, json.loads(result.content) if result.ok else result.content


async def test_the_tool_returns_the_task_companys_passages_best_first(alice):
    company = alice.tenant.company_id
    await in_thread(document_create)(company_id=company, title="Llamas", content="Llamas hum when content.")
    await in_thread(document_create)(company_id=company, title="Alpacas",
                                         content="Alpacas hum too. Alpacas and llamas hum and hum.")

    ok, body = await graphrag(ToolContext("t", company), "why do llamas hum", limit=1)

    assert ok
    assert len(body["results"]) == 1
    assert body["results"][0]["title"] in ("Llamas", "Alpacas")
    assert set(body["results"][0]) == {"document_id", "title", "content", "score"}


async def test_the_tool_never_shows_another_companys_documents(alice, charlie):
    await in_thread(document_create)(company_id=alice.tenant.company_id, title="Acme plan",
                                         content="The secret merger with Initech closes in May.")

    ok, body = await graphrag(ToolContext("t", charlie.tenant.company_id), "secret merger Initech")

    assert ok and body == {"results": []}


async def test_a_task_without_a_company_gets_a_clear_error():
    ok, content = await graphrag(ToolContext("t", None), "anything")

    assert not ok and "no company" in content


def test_knowledge_retrieve_serves_the_workers_use_graphrag_context(alice, charlie):
    document_create(company_id=alice.tenant.company_id, title="Onboarding",
                    content="New hires get a laptop on day one.\n\nBadges are issued by security.")

    hits = knowledge_retrieve(company_id=alice.tenant.company_id, query="when do new hires get a laptop", limit=5)

    assert hits[0]["title"] == "Onboarding" and "laptop" in hits[0]["content"]
    assert knowledge_retrieve(company_id=charlie.tenant.company_id, query="laptop", limit=5) == []


async def test_an_external_graphrag_service_can_replace_the_built_in_search(alice, knobs, fake_services):
    knobs(GRAPHRAG_URL=f"{fake_services.url}/graphrag/query", GRAPHRAG_API_KEY=GRAPHRAG_KEY)

    ok, body = await graphrag(ToolContext("t", alice.tenant.company_id), "who owns the zeppelin")
    sync_hits = await in_thread(knowledge_retrieve)(company_id=alice.tenant.company_id, query="q", limit=3)

    assert ok
    assert body["results"] == [{"document_id": "ext-1", "title": "External answer for acme",
                                "content": "GraphRAG says: who owns the zeppelin", "score": 0.87}]
    assert sync_hits[0]["content"] == "GraphRAG says: q"


async def test_a_failing_external_graphrag_service_is_a_clear_error(alice, knobs, fake_services):
    knobs(GRAPHRAG_URL=f"{fake_services.url}/graphrag/query", GRAPHRAG_API_KEY="wrong-key")

    ok, content = await graphrag(ToolContext("t", alice.tenant.company_id), "anything")

    assert (ok, content) == (False, "error: the GraphRAG service answered HTTP 401")


def test_the_search_api_answers_503_when_the_external_service_fails(api, alice, knobs):
    knobs(GRAPHRAG_URL="http://127.0.0.1:9/unreachable")

    response = api.post("/mageagent/api/v1/knowledge/search", {"query": "x"}, format="json", headers=alice.headers)

    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the GraphRAG service is unreachable: ConnectError"


@pytest.fixture(scope="module")
def graphrag_service() -> Iterator[tuple[FakeServer, dict[str, Any]]]:
    """An external GraphRAG service that answers whatever the test puts in `answer["body"]`."""
    answer: dict[str, Any] = {"body": {"results": []}}

    async def query(request: web.Request) -> web.Response:
        return web.Response(text=answer["body"], content_type="application/json")

    app = web.Application()
    app.router.add_post("/query", query)
    server = FakeServer(app).start()
    yield server, answer
    server.stop()


@pytest.mark.parametrize(("results", "message"), [
    ('[{"document_id": "x", "content": "text", "score": "very relevant"}]', "non-numeric score: 'very relevant'"),
    ('[{"document_id": "x", "content": "text", "score": NaN}]', "non-numeric score"),
    ('[{"document_id": "x", "content": "text", "score": {"value": 1}}]', "non-numeric score"),
    ('[{"document_id": "x", "title": "no content", "score": 0.5}]', "a result without content"),
    ('["just a string"]', "a result that is not an object"),
])
async def test_a_malformed_external_graphrag_answer_is_a_clear_error(alice, knobs, graphrag_service, results, message):
    server, answer = graphrag_service
    answer["body"] = f'{{"results": {results}}}'
    knobs(GRAPHRAG_URL=f"{server.url}/query", GRAPHRAG_API_KEY="")

    ok, content = await graphrag(ToolContext("t", alice.tenant.company_id), "anything")
    with pytest.raises(Unavailable) as raised:  # what the worker records as the retrieval step's error
        await in_thread(knowledge_retrieve)(company_id=alice.tenant.company_id, query="anything", limit=5)

    assert not ok and content.startswith("error: the GraphRAG service answered") and message in content
    assert message in raised.value.message


async def test_a_numeric_score_sent_as_a_string_is_accepted(alice, knobs, graphrag_service):
    server, answer = graphrag_service
    answer["body"] = '{"results": [{"id": "d-1", "content": "text", "score": "0.5"}, {"content": "more"}]}'
    knobs(GRAPHRAG_URL=f"{server.url}/query", GRAPHRAG_API_KEY="")

    ok, body = await graphrag(ToolContext("t", alice.tenant.company_id), "anything")

    assert ok
    assert [(r["document_id"], r["score"]) for r in body["results"]] == [("d-1", 0.5), ("", 0.0)]


async def test_more_passages_than_the_model_may_get_stay_valid_json_and_say_so(alice, knobs, graphrag_service):
    server, answer = graphrag_service
    # Quotes and newlines take more room in JSON than in the text: the fit must count them.
    passages = [{"document_id": f"d-{i}", "title": f"Chapter {i}", "content": f'"{i}"\n' * 300, "score": 1 - i / 100}
                for i in range(20)]
    answer["body"] = json.dumps({"results": passages})
    knobs(GRAPHRAG_URL=f"{server.url}/query", GRAPHRAG_API_KEY="", TOOL_OUTPUT_MAX_CHARS=20_000)

    result = await tool_invoke("graphrag_search", json.dumps({"query": "everything", "limit": 20}),
                               ToolContext("t", alice.tenant.company_id))

    assert result.ok and len(result.content) <= 20_000
    body = json.loads(result.content)
    assert body["truncated"] is True
    kept = body["results"]
    assert 0 < len(kept) < 20
    assert kept[:-1] == passages[:len(kept) - 1]  # best first, whole
    assert passages[len(kept) - 1]["content"].startswith(kept[-1]["content"])
