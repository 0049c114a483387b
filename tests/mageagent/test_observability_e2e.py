"""What an operator sees of a running stack: the web's and a worker's Prometheus metrics
after a task ran, and JSON log lines that carry the task's and the request's ids."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import API, Client, sim, wait_for
from tests.infra import free_port
from tests.stack import Stack, database_url, own_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TOKEN = "metrics-s3cret"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def ops_stack(django_db_setup: None, django_db_blocker: object) -> Iterator[Stack]:
    from django.db import connection

    worker_port = free_port()
    # A queue of its own: another stack's worker in the same run must not take its tasks.
    queue = own_queue("ops")
    running = Stack(database_url(connection.settings_dict), extra_env={
        "MAGEAGENT_WORKER_METRICS_PORT": str(worker_port), "MAGEAGENT_METRICS_TOKEN": TOKEN,
        "MAGEAGENT_LOG_FORMAT": "json", "MAGEAGENT_QUEUE": queue})
    running.worker_metrics_url = f"http://127.0.0.1:{worker_port}/metrics"  # type: ignore[attr-defined]
    running.start()
    # /readyz answers on the worker's heartbeat, which starts before Celery's worker_ready (when
    # the worker opens its metrics port).
    running.wait_until(lambda: running._answers(running.worker_metrics_url), "the worker's metrics")  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.stop()


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def scrape_web(stack: Stack) -> tuple[Samples, dict[str, str]]:
    response = httpx.get(f"{stack.web_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return parse(response.text)


def scrape_worker(stack: Stack) -> tuple[Samples, dict[str, str]]:
    return parse(httpx.get(stack.worker_metrics_url).text)  # type: ignore[attr-defined]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_web_metrics_need_the_bearer_token(ops_stack):
    assert httpx.get(f"{ops_stack.web_url}/metrics").status_code == 401
    assert httpx.get(f"{ops_stack.web_url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_task_moves_the_web_and_worker_counters_by_what_it_did(ops_stack, alice):
    client = Client(ops_stack.web_url, alice.key)
    web_before, _ = scrape_web(ops_stack)
    worker_before, _ = scrape_worker(ops_stack)

    task = client.create(f"count {sim(tokens=20, interval_ms=2)}")
    done = client.wait_terminal(task["id"])

    assert done["status"] == "completed"
    usage = done["result"]["usage"]
    web, web_types = scrape_web(ops_stack)
    worker, worker_types = wait_for(lambda: (found := scrape_worker(ops_stack)) and total(
        found[0], "mageagent_tasks_finished_total", status="completed") > total(
        worker_before, "mageagent_tasks_finished_total", status="completed") and found, "the worker's counters")

    def moved(after: Samples, before: Samples, name: str, **labels: str) -> float:
        return round(total(after, name, **labels) - total(before, name, **labels), 9)

    assert moved(web, web_before, "mageagent_tasks_created_total") == 1
    assert moved(web, web_before, "mageagent_http_requests_total", method="POST", view="mageagent/api/v1/tasks",
                 status="202") == 1
    assert moved(web, web_before, "mageagent_http_request_duration_seconds_count",
                 view="mageagent/api/v1/tasks") >= 1
    assert total(web, "mageagent_followers", kind="sse") == 0  # the stream it was followed on has ended
    assert ("mageagent_tasks_waiting", frozenset()) in web

    assert moved(worker, worker_before, "mageagent_tasks_finished_total", status="completed") == 1
    assert moved(worker, worker_before, "mageagent_tasks_finished_total", status="failed") == 0
    assert moved(worker, worker_before, "mageagent_task_queue_wait_seconds_count") == 1
    assert moved(worker, worker_before, "mageagent_task_duration_seconds_count", status="completed") == 1
    assert moved(worker, worker_before, "mageagent_time_to_first_token_seconds_count") == 1
    assert moved(worker, worker_before, "mageagent_provider_calls_total") == 1
    assert usage["completion_tokens"] == 20
    assert moved(worker, worker_before, "mageagent_llm_tokens_total", direction="out") == 20
    assert moved(worker, worker_before, "mageagent_llm_tokens_total", direction="in") == usage["prompt_tokens"] > 0
    assert moved(worker, worker_before, "mageagent_llm_cost_usd_total") == pytest.approx(done["result"]["cost_usd"])
    assert moved(worker, worker_before, "mageagent_provider_errors_total") == 0
    assert total(worker, "mageagent_tasks_running") == 0

    for samples, types in ((web, web_types), (worker, worker_types)):
        ours = {name: kind for name, kind in types.items() if name.startswith("mageagent_")}
        assert ours
        for name, kind in ours.items():
            # prometheus_client strips a counter's `_total` from its family name; its samples keep it.
            if kind == "counter":
                assert {n for n, _ in samples if n.startswith(f"{name}_")} <= {f"{name}_total", f"{name}_created"}
            if kind == "histogram":
                assert name.endswith("_seconds"), name
            assert not name.endswith(("_ms", "_milliseconds")), name
        labels = {k for (n, ls) in samples if n.startswith("mageagent_") for k, _ in ls}
        assert not labels & {"task_id", "task", "company", "app", "id"}


def test_every_log_line_is_json_and_the_workers_carry_the_task_and_request_ids(ops_stack, alice):
    client = Client(ops_stack.web_url, alice.key)
    response = client.http.post(f"{API}/tasks", json={"prompt": f"logged {sim(tokens=5)}"},
                                headers={"X-Request-ID": "req-ops-42"})
    assert response.status_code == 202
    assert response.headers["X-Request-ID"] == "req-ops-42"
    task_id = response.json()["id"]
    client.wait_terminal(task_id)
    made = client.http.get(f"{API}/tasks/{task_id}")
    assert len(made.headers["X-Request-ID"]) == 32  # none given: one is made

    def lines(process: str) -> list[dict]:
        text = ops_stack.processes[process].output().splitlines()
        assert [line for line in text if not line.startswith("{")] == []
        return [json.loads(line) for line in text]

    def worker_lines() -> list[dict]:
        return lines("worker")

    mine = wait_for(lambda: [line for line in worker_lines() if line.get("task_id") == task_id],
                    "the worker's lines about the task")
    assert all(line["request_id"] == "req-ops-42" for line in mine)
    assert {"company", "app", "attempt"} <= set().union(*mine)
    web_lines = lines("web")
    access = [line for line in web_lines if line["logger"] == "mageagent.access"]
    assert any(line["path"] == f"{API}/tasks" and line["status"] == 202 for line in access)
    assert all("logged" not in line["message"] for line in mine + web_lines)  # the prompt is never logged
