"""Tools inside real tasks: daphne, a Celery worker and the LLM simulator as processes; the
simulator asks for the tool calls, the worker runs them, the events show them live."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.clients import API, Client, sim, wait_for
from tests.fakes.providers import providers_app
from tests.fakes.server import FakeServer
from tests.tools.test_code_execution import processes_with
from tools.sandbox import sandbox_unavailable_reason

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def calls(*specs: tuple[str, dict]) -> str:
    return sim(tool_calls=[{"name": name, "arguments": arguments} for name, arguments in specs], tokens=3)


def typed(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


@pytest.fixture
def client(stack, alice) -> Client:
    return Client(stack.web_url, alice.key)


def test_a_task_searches_the_knowledge_base_through_the_model_and_answers(client, charlie, stack):
    added = client.http.post(f"{API}/knowledge/documents", json={
        "title": "Refund policy", "content": "Refunds are issued within 14 days of the return."})
    assert added.status_code == 201, added.text
    prompt = f"What is our refund policy? {calls(('graphrag_search', {'query': 'refund policy'}))}"

    task = client.wait_terminal(client.create(prompt, tools=["graphrag_search"])["id"])

    events = client.events(task["id"])["events"]
    [call], [result] = typed(events, "tool_call"), typed(events, "tool_result")
    assert call["name"] == "graphrag_search" and json.loads(call["arguments"]) == {"query": "refund policy"}
    assert (result["id"], result["name"], result["ok"]) == (call["id"], "graphrag_search", True)
    hits = json.loads(result["content"])["results"]
    assert hits[0]["title"] == "Refund policy" and "14 days" in hits[0]["content"]
    assert events.index(call) < events.index(result) < events.index(typed(events, "done")[0])
    assert task["status"] == "completed"
    assert '[tool:graphrag_search {"results":[{"document_id":' in task["result"]["content"]


def test_another_companys_task_cannot_reach_the_knowledge_base(stack, alice, charlie):
    Client(stack.web_url, alice.key).http.post(f"{API}/knowledge/documents", json={
        "title": "Acme only", "content": "The vault combination is 1234."})
    client = Client(stack.web_url, charlie.key)
    prompt = f"vault? {calls(('graphrag_search', {'query': 'vault combination'}))}"

    task = client.wait_terminal(client.create(prompt, tools=["graphrag_search"])["id"])

    [result] = typed(client.events(task["id"])["events"], "tool_result")
    assert json.loads(result["content"]) == {"results": []}


def test_a_model_calling_a_tool_the_task_did_not_request_gets_an_error_result(client):
    prompt = f"sneaky {calls(('code_execution', {'language': 'bash', 'code': 'id'}))}"

    task = client.wait_terminal(client.create(prompt, tools=["graphrag_search"])["id"])

    [result] = typed(client.events(task["id"])["events"], "tool_result")
    assert task["status"] == "completed"
    assert not result["ok"] and "uid=" not in result["content"]


@pytest.mark.skipif(sandbox_unavailable_reason() is not None, reason="no sandbox on this machine")
def test_cancelling_a_task_stops_its_running_code(client):
    marker = f"e2e-cancel-{uuid.uuid4().hex}"
    code = f"echo started; exec -a {marker} sleep 30"
    task = client.create(f"run it {calls(('code_execution', {'language': 'bash', 'code': code}))}",
                         tools=["code_execution"])
    wait_for(lambda: processes_with(marker), "the sandboxed program to start")

    response = client.http.post(f"{API}/tasks/{task['id']}/cancel")

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    wait_for(lambda: processes_with(marker) == [], "the sandboxed program to be killed")
    finished = client.wait_terminal(task["id"])
    events = client.events(task["id"])["events"]
    assert finished["status"] == "cancelled"
    assert typed(events, "tool_call") and not typed(events, "tool_result")
    assert typed(events, "done")[0]["status"] == "cancelled"


@pytest.mark.skipif(sandbox_unavailable_reason() is not None, reason="no sandbox on this machine")
def test_several_tool_calls_in_one_turn_run_and_come_back_together(client):
    prompt = "two at once " + calls(("code_execution", {"language": "python", "code": "print(6 * 7)"}),
                                    ("code_execution", {"language": "bash", "code": "echo hi"}))

    task = client.wait_terminal(client.create(prompt, tools=["code_execution"])["id"])

    events = client.events(task["id"])["events"]
    results = {e["id"]: json.loads(e["content"]) for e in typed(events, "tool_result")}
    assert len(typed(events, "tool_call")) == 2 and len(results) == 2
    assert sorted(r["stdout"] for r in results.values()) == ["42\n", "hi\n"]
    assert task["result"]["content"].count("[tool:code_execution") == 2


@pytest.fixture(scope="module")
def search_stack(django_db_setup, django_db_blocker) -> Iterator[tuple[object, FakeServer]]:
    """A stack of its own whose worker has a SearxNG configured (on its own queue, so the
    session stack's worker never takes its tasks)."""
    from django.db import connection

    from tests.stack import Stack, database_url, own_queue

    searxng = FakeServer(providers_app()).start()
    queue = own_queue("search")
    running = Stack(database_url(connection.settings_dict), extra_env={
        "MAGEAGENT_SEARXNG_URL": f"{searxng.url}/searxng", "MAGEAGENT_QUEUE": queue}).start()
    try:
        yield running, searxng
    finally:
        running.stop()
        searxng.stop()


def test_a_task_searches_the_web_through_the_configured_provider(search_stack, alice):
    running, searxng = search_stack
    client = Client(running.web_url, alice.key)
    prompt = f"news? {calls(('web_search', {'query': 'red pandas', 'max_results': 2}))}"

    task = client.wait_terminal(client.create(prompt, tools=["web_search"])["id"])

    [result] = typed(client.events(task["id"])["events"], "tool_result")
    body = json.loads(result["content"])
    assert result["ok"] and body["provider"] == "searxng"
    assert [r["title"] for r in body["results"]] == ["Result 1 for red pandas", "Result 2 for red pandas"]
    assert any(r["query"].get("q") == "red pandas" for r in searxng.requests)
    assert "[tool:web_search " in task["result"]["content"]
