"""The platform end to end: daphne, a Celery worker and the LLM simulator as processes,
driven over real HTTP, SSE and WebSocket."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime

import httpx
import pytest

from tests.clients import Client, answer_from_chunks, sim, tokens

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(stack, alice) -> Client:
    return Client(stack.web_url, alice.key)


def when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def assert_gapless(events: list[dict]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "done"
    assert [e["type"] for e in events].count("done") == 1


def test_a_task_streams_to_completion_over_sse(client):
    task = client.create(f"hello {sim(tokens=30, interval_ms=5)}")
    assert task["status"] == "queued" and task["taskId"] == task["id"]

    read = client.sse(task["id"])

    events = [e.data for e in read.events]
    assert read.ended
    assert_gapless(events)
    assert [e.id for e in read.events] == [e["seq"] for e in events]
    # chunk and done come without an `event:` line (EventSource.onmessage); the rest are named
    assert {e.event for e in read.events if e.data["type"] in ("chunk", "done")} == {None}
    assert all(e.event == e.data["type"] for e in read.events if e.data["type"] not in ("chunk", "done"))
    finished = client.get(task["id"])
    assert finished["status"] == "completed"
    assert finished["result"]["content"] == tokens(30) == answer_from_chunks(events)
    assert events[-1]["result"]["content"] == tokens(30)
    assert finished["result"]["usage"]["completion_tokens"] == 30
    assert finished["result"]["tokensUsed"] > 30
    assert finished["started_at"] and finished["completed_at"]
    assert "llm_execution" in finished["steps"]
    # started_at is when the worker took the task: before its routing and start events
    processing = next(e for e in events if e["type"] == "status" and e["status"] == "processing")
    assert when(finished["created_at"]) <= when(finished["started_at"]) <= when(processing["ts"]) + 0.001


def test_a_client_resuming_with_last_event_id_misses_and_repeats_nothing(client):
    task = client.create(f"resume {sim(tokens=60, interval_ms=10)}")
    first = client.sse(task["id"], stop_after=8)
    last_seen = first.events[-1].id

    rest = client.sse(task["id"], last_event_id=last_seen)

    events = [e.data for e in first.events + rest.events]
    assert_gapless(events)
    assert answer_from_chunks(events) == tokens(60)


def test_after_query_parameter_resumes_like_last_event_id(client):
    task = client.create(f"after {sim(tokens=5)}")
    full = client.sse(task["id"])

    tail = client.sse(task["id"], after=3)

    assert [e.data for e in tail.events] == [e.data for e in full.events][3:]


def test_a_late_subscriber_gets_the_whole_replay_and_the_stream_ends(client):
    task = client.create(f"late {sim(tokens=10)}")
    client.wait_terminal(task["id"])

    read = client.sse(task["id"])

    assert read.ended
    events = [e.data for e in read.events]
    assert_gapless(events)
    assert answer_from_chunks(events) == tokens(10)


def test_subscribers_connected_at_every_moment_see_every_event_exactly_once(client):
    task = client.create(f"many {sim(tokens=80, interval_ms=5)}")
    reads: list[list[dict]] = []

    def follow() -> None:
        reads.append([e.data for e in client.sse(task["id"]).events])

    threads = []
    for _ in range(6):  # before start, during the stream, and near the end
        threads.append(threading.Thread(target=follow))
        threads[-1].start()
        time.sleep(0.07)
    for thread in threads:
        thread.join(30)

    assert len(reads) == 6
    for events in reads:
        assert_gapless(events)
        assert answer_from_chunks(events) == tokens(80)
    assert all(events == reads[0] for events in reads)


def test_the_sse_stream_accepts_the_key_as_a_query_token(client):
    task = client.create(f"token {sim(tokens=3)}")

    read = client.sse(task["id"], token_in_query=True)

    assert answer_from_chunks([e.data for e in read.events]) == tokens(3)


def test_the_sse_stream_sends_pings_while_idle(stack, alice):
    url = stack.start_extra_web("web-fast-ping", {"MAGEAGENT_SSE_PING_S": "0.2"})
    try:
        client = Client(url, alice.key)
        task = client.create(f"slow start {sim(tokens=2, ttft_ms=1200)}")
        read = client.sse(task["id"])
    finally:
        stack.stop_process("web-fast-ping")

    assert read.comments.count("ping") >= 2
    assert answer_from_chunks([e.data for e in read.events]) == tokens(2)


def test_polling_events_returns_what_follows_a_position(client):
    task = client.create(f"poll {sim(tokens=4)}")
    client.wait_terminal(task["id"])

    page = client.events(task["id"], after=2)

    assert page["done"] is True
    assert page["events"][0]["seq"] == 3
    assert page["events"][-1]["type"] == "done"
    everything = client.events(task["id"])["events"]
    assert answer_from_chunks(everything) == tokens(4)


def test_a_per_task_websocket_delivers_every_event_then_closes(client):
    task = client.create(f"ws {sim(tokens=40, interval_ms=5)}")

    frames = client.ws_task(task["id"])

    assert_gapless(frames)
    assert answer_from_chunks(frames) == tokens(40)


def test_a_per_task_websocket_resumes_after_a_position(client):
    task = client.create(f"ws resume {sim(tokens=6)}")
    client.wait_terminal(task["id"])

    frames = client.ws_task(task["id"], after=4)

    assert frames[0]["seq"] == 5 and frames[-1]["type"] == "done"


def test_the_multiplexed_websocket_follows_several_tasks(stack, client, alice):
    import json

    from websockets.sync.client import connect

    one = client.create(f"mux one {sim(tokens=20, interval_ms=5)}")
    two = client.create(f"mux two {sim(tokens=25, interval_ms=5)}")
    received: dict[str, list[dict]] = {one["id"]: [], two["id"]: []}
    url = client.ws_url(f"/mageagent/ws?token={alice.key}")
    with connect(url) as ws:
        for task in (one, two):
            ws.send(json.dumps({"type": "subscribe-task", "taskId": task["id"], "after": 0}))
        ws.send(json.dumps({"type": "subscribe-task", "taskId": str(uuid.uuid4())}))
        errors = []
        while not all(r and r[-1]["type"] == "done" for r in received.values()):
            frame = json.loads(ws.recv(timeout=20))
            if frame["type"] == "error":
                errors.append(frame)
                continue
            assert frame["type"] == "task-update"
            received[frame["taskId"]].append(frame["data"])

    assert errors and errors[0]["error"]["code"] == "not_found"
    assert answer_from_chunks(received[one["id"]]) == tokens(20)
    assert answer_from_chunks(received[two["id"]]) == tokens(25)
    for events in received.values():
        assert_gapless(events)


def test_cancelling_mid_stream_stops_the_provider_stream_and_keeps_partial_content(client, stack):
    key = f"cancel-{uuid.uuid4()}"
    task = client.create(f"long {sim(tokens=400, interval_ms=20, key=key)}")
    first = client.sse(task["id"], stop_after=10)  # some chunks have streamed
    assert any(e.data["type"] == "chunk" for e in first.events)

    requested_at = time.time()
    response = client.http.post(f"/mageagent/api/v1/tasks/{task['id']}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    read = client.sse(task["id"])
    events = [e.data for e in read.events]
    assert_gapless(events)
    assert events[-1]["status"] == "cancelled"
    cancelled = client.get(task["id"])
    partial = answer_from_chunks(events)
    assert cancelled["status"] == "cancelled"
    assert cancelled["result"]["content"] == partial == events[-1]["result"]["content"]
    assert 0 < len(partial) < len(tokens(400))
    record = httpx.get(f"{stack.sim_url}/_sim/requests/{key}").json()[-1]
    assert record["status"] == "client_closed"
    assert record["closed_at"] - requested_at < 1.0


def test_cancelling_again_is_idempotent_and_a_finished_task_cannot_be_cancelled(client):
    task = client.create(f"done soon {sim(tokens=2)}")
    client.wait_terminal(task["id"])

    response = client.http.post(f"/mageagent/api/v1/tasks/{task['id']}/cancel")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_a_queued_task_that_is_cancelled_never_runs(client, stack, alice):
    from tasks import services
    from tasks.models import Task

    key = f"never-{uuid.uuid4()}"
    # Accepted but not yet handed to the broker: the row alone.
    queued = Task.objects.create(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id,
                                 prompt=f"never {sim(tokens=3, key=key)}", priority=9)
    task_id = str(queued.id)

    response = client.http.post(f"/mageagent/api/v1/tasks/{task_id}/cancel")
    again = client.http.post(f"/mageagent/api/v1/tasks/{task_id}/cancel")
    services.task_send(task_id=task_id, priority=9)  # a late or duplicate delivery
    client.wait_terminal(client.create(f"after it {sim(tokens=1)}", priority=0)["id"])

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    events = [e.data for e in client.sse(task_id).events]
    assert [e["type"] for e in events] == ["status", "done"]  # cancelled, done
    assert events[-1]["status"] == "cancelled" and events[-1]["result"] is None
    assert httpx.get(f"{stack.sim_url}/_sim/requests/{key}").json() == []
    assert client.get(task_id)["started_at"] is None


def test_cancelling_over_the_task_websocket(client, alice):
    import json

    from websockets.sync.client import connect

    task = client.create(f"ws cancel {sim(tokens=400, interval_ms=20)}")
    frames = []
    with connect(client.ws_url(f"/mageagent/api/v1/tasks/{task['id']}/ws?token={alice.key}")) as ws:
        while len([f for f in frames if f["type"] == "chunk"]) < 3:
            frames.append(json.loads(ws.recv(timeout=10)))
        ws.send(json.dumps({"type": "cancel"}))
        try:
            while True:
                frames.append(json.loads(ws.recv(timeout=10)))
        except Exception as exc:
            assert exc.__class__.__name__ == "ConnectionClosedOK"

    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "cancelled"
    assert client.get(task["id"])["status"] == "cancelled"


def test_a_transient_provider_error_is_retried_with_a_reset(client):
    key = f"retry-{uuid.uuid4()}"
    # An explicit model has no fallback candidates, so the attempt itself is retried.
    task = client.create(f"flaky {sim(tokens=5, error=503, error_times=1, key=key)}", model="gpt-4o-mini")

    events = [e.data for e in client.sse(task["id"]).events]

    finished = client.get(task["id"])
    assert finished["status"] == "completed"
    assert finished["attempts"] == 2
    statuses = [(e["status"], e["attempt"]) for e in events if e["type"] == "status"]
    assert statuses == [("queued", 1), ("processing", 1), ("queued", 2), ("processing", 2)]
    assert any(e["type"] == "reset" and e["attempt"] == 2 for e in events)
    assert answer_from_chunks(events) == finished["result"]["content"] == tokens(5)


def test_a_stream_that_breaks_mid_way_restarts_the_answer(client):
    key = f"break-{uuid.uuid4()}"
    task = client.create(f"breaks {sim(tokens=12, interval_ms=5, fail_after_tokens=4, error_times=1, key=key)}",
                         model="gpt-4o-mini")

    events = [e.data for e in client.sse(task["id"]).events]

    assert client.get(task["id"])["status"] == "completed"
    assert [e["type"] for e in events].count("reset") == 1
    assert answer_from_chunks(events) == tokens(12)


def test_a_non_retryable_provider_error_fails_at_once(client):
    task = client.create(f"bad {sim(error=400, error_message='bad request from provider')}")

    events = [e.data for e in client.sse(task["id"]).events]

    failed = client.get(task["id"])
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["code"] == "provider_error"
    assert "bad request from provider" in failed["error"]["message"]
    assert failed["result"] is None
    assert events[-1]["type"] == "done" and events[-1]["error"]["code"] == "provider_error"


def test_retries_stop_after_the_last_attempt(client):
    task = client.create(f"always down {sim(error=503)}", model="gpt-4o-mini")

    events = [e.data for e in client.sse(task["id"]).events]

    failed = client.get(task["id"])
    assert failed["status"] == "failed" and failed["attempts"] == 3
    assert failed["error"]["code"] == "provider_unavailable"
    assert events[-1]["status"] == "failed"


def test_cancelling_over_the_multiplexed_websocket(client, alice):
    import json

    from websockets.sync.client import connect

    task = client.create(f"mux cancel {sim(tokens=400, interval_ms=20)}")
    received: list[dict] = []
    with connect(client.ws_url(f"/mageagent/ws?token={alice.key}")) as ws:
        ws.send(json.dumps({"type": "subscribe-task", "taskId": task["id"], "after": 0}))
        while len([e for e in received if e["type"] == "chunk"]) < 3:
            frame = json.loads(ws.recv(timeout=10))
            assert frame["type"] == "task-update", frame
            received.append(frame["data"])
        ws.send(json.dumps({"type": "cancel-task", "taskId": task["id"]}))
        while received[-1]["type"] != "done":
            frame = json.loads(ws.recv(timeout=10))
            assert frame["type"] == "task-update", frame
            received.append(frame["data"])

    assert_gapless(received)
    assert received[-1]["status"] == "cancelled"
    cancelled = client.get(task["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["result"]["content"] == answer_from_chunks(received)


def test_a_finished_task_whose_log_expired_ends_every_resume_with_done(client, alice):
    import json

    from websockets.sync.client import connect

    from tasks import events

    task = client.create(f"expired {sim(tokens=4)}")
    client.wait_terminal(task["id"])
    seen = len(client.events(task["id"])["events"])  # the real log: status, steps, chunks, done
    events.sync_client().delete(events.stream_key(task["id"]), events.meta_key(task["id"]))
    expected = {"type": "done", "done": True, "status": "completed"}

    whole = [e.data for e in client.sse(task["id"]).events]
    resumed = client.sse(task["id"], last_event_id=seen)
    page = client.events(task["id"], after=seen)
    per_task = client.ws_task(task["id"], after=seen)
    with connect(client.ws_url(f"/mageagent/ws?token={alice.key}")) as ws:
        ws.send(json.dumps({"type": "subscribe-task", "taskId": task["id"], "after": seen}))
        multiplexed = json.loads(ws.recv(timeout=10))

    assert [e["type"] for e in whole] == ["chunk", "done"] and answer_from_chunks(whole) == tokens(4)
    assert resumed.ended and [e.id for e in resumed.events] == [seen + 1]
    for done in (resumed.events[0].data, page["events"][0], per_task[0], multiplexed["data"]):
        assert done["seq"] == seen + 1 and expected.items() <= done.items()
        assert done["result"]["content"] == tokens(4)
    assert page["done"] is True and len(page["events"]) == 1
    assert len(per_task) == 1 and multiplexed["type"] == "task-update"
