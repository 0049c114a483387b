"""Traces as an operator's collector receives them: a web and a worker process started with the
standard OTEL_* variables export over OTLP/HTTP to a collector this test runs, and one task's
spans, from the HTTP request through the worker's pickup, routing, provider call and tool run,
share one trace."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.clients import API, Client, sim, wait_for
from tests.infra import free_port
from tests.stack import Stack, database_url, own_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: what it is sent, as plain span dicts."""

    def __init__(self, port: int) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Receive)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.spans)


class _Receive(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    found.append({"service": service, "name": span.name, "trace_id": span.trace_id.hex(),
                                  "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                                  "start": span.start_time_unix_nano,
                                  "attributes": {a.key: _value(MessageToDict(a.value)) for a in span.attributes}})
        with self.server.lock:
            self.server.spans.extend(found)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def _value(value: dict[str, Any]) -> Any:
    (kind, raw), = value.items()
    if kind == "intValue":
        return int(raw)
    if kind == "arrayValue":
        return [_value(v) for v in raw.get("values", [])]
    return raw


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def traced_stack(django_db_setup: None, django_db_blocker: object, collector: Collector) -> Iterator[Stack]:
    from django.db import connection

    running = Stack(database_url(connection.settings_dict), extra_env={
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200", "MAGEAGENT_QUEUE": own_queue("traces")})
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_a_tasks_request_pickup_routing_provider_call_and_tool_run_share_one_trace(traced_stack, collector, alice):
    client = Client(traced_stack.web_url, alice.key)
    added = client.http.post(f"{API}/knowledge/documents", json={"title": "Refunds", "content": "Within 14 days."})
    assert added.status_code == 201, added.text
    directive = sim(tool_calls=[{"name": "graphrag_search", "arguments": {"query": "refunds"}}], tokens=7)

    task = client.create(f"refunds? {directive}", tools=["graphrag_search"])
    done = client.wait_terminal(task["id"])
    assert done["status"] == "completed"

    def task_spans() -> list[dict[str, Any]]:
        spans = collector.snapshot()
        runs = [s for s in spans if s["attributes"].get("mageagent.task.id") == task["id"]
                and s["name"].startswith("run/")]
        if not runs:
            return []
        mine = [s for s in spans if s["trace_id"] == runs[0]["trace_id"]]
        # Everything the worker does for the task is exported by now: its tool run ends last.
        return mine if any(s["name"] == "execute_tool graphrag_search" for s in mine) else []

    spans = wait_for(task_spans, "the task's spans at the collector", timeout=30)
    by_name = {s["name"]: s for s in spans}
    request = by_name["POST mageagent/api/v1/tasks"]
    enqueue, run = by_name["mageagent.task.enqueue"], by_name["run/mageagent.task.execute"]
    route = by_name["mageagent.task.route"]
    calls = sorted((s for s in spans if s["name"].startswith("chat ")), key=lambda s: s["start"])
    tool = by_name["execute_tool graphrag_search"]

    assert request["service"] == enqueue["service"] == "mageagent-web"
    assert run["service"] == route["service"] == tool["service"] == "mageagent-worker"
    assert request["parent"] == ""  # the trace starts at the request
    assert enqueue["parent"] == request["span_id"]
    assert run["parent"] == enqueue["span_id"]  # carried in the Celery message's headers
    assert route["parent"] == run["span_id"]
    assert {c["parent"] for c in calls} == {run["span_id"]} and len(calls) == 2  # the tool round, then the answer
    assert tool["parent"] == run["span_id"]
    assert run["attributes"]["mageagent.task.attempt"] == 1
    assert enqueue["attributes"]["mageagent.task.id"] == task["id"]
    assert route["attributes"]["mageagent.routing.model"] == done["routing"]["model"]

    usage = done["result"]["usage"]
    for call in calls:
        attributes = call["attributes"]
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.system"] == done["routing"]["provider"]
        assert call["name"] == f"chat {attributes['gen_ai.request.model']}"
    assert sum(c["attributes"]["gen_ai.usage.input_tokens"] for c in calls) == usage["prompt_tokens"]
    assert sum(c["attributes"]["gen_ai.usage.output_tokens"] for c in calls) == usage["completion_tokens"]
    assert calls[-1]["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert tool["attributes"]["gen_ai.tool.name"] == "graphrag_search"
    # Spans per task, never per chunk; and prompts stay out of every attribute.
    assert len(spans) < 20
    assert all("refunds?" not in str(s["attributes"]) for s in spans)
