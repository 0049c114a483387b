"""Outages as API clients and followers see them: 503 with Retry-After (never a 500), SSE
heartbeats through a Redis outage, and followers that reconnect and resume exactly once.

A stack (daphne, a worker, the simulator) of the module's own, on the test database and a
Redis the module starts, stops and restarts on the same port. Database outages are
connections terminated with pg_terminate_backend, on the test database only.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from websockets.sync.client import connect

from devtools.faults import PrivateRedis
from tests.clients import API, Client, parse_sse, sim, wait_for
from tests.stack import Stack, database_url

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PING_S = 0.5  # MAGEAGENT_SSE_PING_S of the stack: the contract's 15 s, shortened for the test
OUTAGE_S = 2.0  # MAGEAGENT_FOLLOW_OUTAGE_S: how long a follower waits for an unreadable log
RETRY_S = 1.0  # EventSource's reconnection delay (the stream's `retry:`)


class Redis(PrivateRedis):
    """The fault suite's Redis with its append-only file, stopped with SIGTERM: Redis
    writes the file out on the way down, so a stop and a start on the same port keep the
    event log and the broker's messages."""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    server = Redis(persist=True).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def outage_stack(django_db_setup: None, redis: Redis) -> Iterator[Stack]:
    from django.db import connection

    stack = Stack(database_url(connection.settings_dict),
                  {"REDIS_URL": redis.url, "MAGEAGENT_SSE_PING_S": str(PING_S),
                   "MAGEAGENT_FOLLOW_OUTAGE_S": str(OUTAGE_S)})
    try:
        yield stack.start()
    finally:
        stack.stop()


class EventSource(threading.Thread):
    """Follows a task's SSE stream as a browser's EventSource does: when a response ends
    or the connection drops it reconnects after `retry` with Last-Event-ID; a response
    other than 200 makes it give up for good."""

    def __init__(self, base_url: str, key: str, task_id: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{base_url}{API}/tasks/{task_id}/stream"
        self.key = key
        self.events: list[dict[str, Any]] = []
        self.comments: list[tuple[float, str]] = []  # (monotonic time, text)
        self.statuses: list[int] = []
        self.ended: list[float] = []  # when the server ended a response
        self.done = threading.Event()
        self.stopped = False

    def run(self) -> None:
        while not self.stopped:
            headers = {"Authorization": f"Bearer {self.key}"}
            if self.events:
                headers["Last-Event-ID"] = str(self.events[-1]["seq"])
            try:
                # A read timeout far past the heartbeat: a silent stream fails the test.
                with httpx.stream("GET", self.url, headers=headers, timeout=httpx.Timeout(10, read=20)) as response:
                    self.statuses.append(response.status_code)
                    if response.status_code != 200:
                        return
                    for item in parse_sse(response.iter_lines()):
                        if isinstance(item, str):
                            self.comments.append((time.monotonic(), item))
                        else:
                            self.events.append(item.data | {"seq": item.id})
                            if item.data.get("done"):
                                self.done.set()
                                return
                self.ended.append(time.monotonic())
            except httpx.TransportError:
                pass
            time.sleep(RETRY_S)

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for at, text in self.comments if text == "ping" and start <= at <= end)


class SocketFollower(threading.Thread):
    """Follows the per-task WebSocket; on a close other than 1000 (4503, a refused
    handshake) it reconnects with ?after= the last seq it saw."""

    def __init__(self, base_url: str, key: str, task_id: str) -> None:
        super().__init__(daemon=True)
        self.base = base_url.replace("http://", "ws://") + f"{API}/tasks/{task_id}/ws"
        self.key = key
        self.frames: list[dict[str, Any]] = []
        self.close_codes: list[int | None] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            after = next((f["seq"] for f in reversed(self.frames) if "seq" in f), 0)
            try:
                with connect(f"{self.base}?after={after}", open_timeout=10,
                             additional_headers={"Authorization": f"Bearer {self.key}"}) as ws:
                    try:
                        while True:
                            frame = json.loads(ws.recv(timeout=60))
                            self.frames.append(frame)
                    except Exception as exc:
                        if "ConnectionClosed" not in exc.__class__.__name__:
                            raise
                    self.close_codes.append(ws.close_code)
                    if ws.close_code == 1000:
                        self.done.set()
                        return
            except (OSError, TimeoutError) as exc:
                self.close_codes.append(getattr(getattr(exc, "response", None), "status_code", None))
            except Exception as exc:  # a refused handshake (websockets' InvalidStatus)
                self.close_codes.append(getattr(getattr(exc, "response", None), "status_code", -1))
            time.sleep(RETRY_S)


def assert_each_event_once_then_done(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert events[-1]["type"] == "done" and events[-1]["status"] == "completed", events[-1]
    assert [e["type"] for e in events].count("done") == 1


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.request.url, response.status_code, response.text[:300])
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "unavailable"


def test_a_redis_outage_is_503_to_the_api_and_followers_resume_exactly_once(outage_stack, redis, alice):
    client = Client(outage_stack.web_url, alice.key)
    # No worker while Redis is down: what is under test is the web, and the task runs
    # once Redis is back, so its followers see its whole log after the outage.
    outage_stack.stop_process("worker")
    task = client.create(f"through the outage {sim(tokens=12, interval_ms=20)}")
    other = client.create(f"cancelled during the outage {sim(tokens=2)}")
    sse = EventSource(outage_stack.web_url, alice.key, task["id"])
    socket = SocketFollower(outage_stack.web_url, alice.key, task["id"])
    sse.start()
    socket.start()
    wait_for(lambda: sse.events and socket.frames, "both followers to see the queued status")

    redis.stop()
    down_at = time.monotonic()
    calls = {
        "create": lambda: client.http.post(f"{API}/tasks", json={"prompt": "during the outage"}),
        "events": lambda: client.http.get(f"{API}/tasks/{task['id']}/events"),
        "cancel": lambda: client.http.post(f"{API}/tasks/{other['id']}/cancel"),
        "detail": lambda: client.http.get(f"{API}/tasks/{task['id']}"),
        "list": lambda: client.http.get(f"{API}/tasks"),
        "metrics": lambda: client.http.get(f"{API}/queue/metrics"),
        "documents": lambda: client.http.get(f"{API}/knowledge/documents"),
        "readyz": lambda: client.http.get("/readyz"),
    }
    answers = {name: call() for name, call in calls.items()}
    # The SSE follower's stream ends once the log has been unreadable for OUTAGE_S, and
    # its reconnection (a 200: the open needs the database only) pings on.
    wait_for(lambda: sse.ended and sse.pings_between(sse.ended[0], time.monotonic()) >= 2,
             "the stream to end and the reconnected one to ping", timeout=30)
    wait_for(lambda: 4503 in socket.close_codes, "the socket to close with 4503", timeout=30)
    redis.start()
    up_at = time.monotonic()
    outage_stack.start_worker("worker")

    assert sse.done.wait(60) and socket.done.wait(60)
    assert all(r.status_code != 500 for r in answers.values()), {n: r.status_code for n, r in answers.items()}
    for name in ("events", "cancel"):
        assert_unavailable(answers[name])
    # A task is accepted with Redis down: its row is the ledger, the reconciler sends it
    # once Redis is back (tasks/services.py _enqueue).
    assert answers["create"].status_code == 202
    assert answers["readyz"].status_code == 503
    assert answers["readyz"].json()["error"]["details"]["redis"].startswith("error")
    assert sse.statuses == [200] * len(sse.statuses) and len(sse.statuses) >= 2
    assert sse.pings_between(down_at, up_at) >= 4
    assert_each_event_once_then_done(sse.events)
    socket_events = [f for f in socket.frames if "seq" in f]
    assert_each_event_once_then_done(socket_events)
    assert [(e["seq"], e["type"]) for e in socket_events] == [(e["seq"], e["type"]) for e in sse.events]
    refused = [f for f in socket.frames if f.get("type") == "error"]
    assert refused and {f["error"]["code"] for f in refused} == {"unavailable"}
    assert 500 not in socket.close_codes
    assert client.get(task["id"])["status"] == "completed"


WEB_APPLICATION = "mageagent-outage-web"


def _terminate_web_connections(dsn: str, database: str) -> int:
    # Only the connections of this test's web process, on the test database: the worker's
    # are another suite's subject (tests/faults, the worker side).
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = %s AND application_name = %s", [database, WEB_APPLICATION]).fetchone()
    return int(row[0]) if row else 0


def test_database_connections_terminated_are_never_a_500(outage_stack, alice):
    from django.db import connection

    settings = connection.settings_dict
    dsn = database_url(settings).replace("postgres://", "postgresql://", 1)
    # A web process of its own whose connections name themselves (libpq's application_name).
    web_url = outage_stack.start_extra_web(
        "web-db", {"DATABASE_URL": f"{database_url(settings)}?application_name={WEB_APPLICATION}"})
    client = Client(web_url, alice.key)
    tasks = [client.create(f"t{i} {sim(tokens=30, interval_ms=50)}") for i in range(4)]
    followers = [EventSource(web_url, alice.key, t["id"]) for t in tasks]
    for follower in followers:
        follower.start()
    wait_for(lambda: all(f.events for f in followers), "the followers to open")
    statuses: list[tuple[str, httpx.Response]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=web_url, headers=alice.headers, timeout=30) as http:
            while not stop.is_set():
                try:
                    statuses.append(("create", http.post(f"{API}/tasks", json={"prompt": f"x {sim(tokens=2)}"})))
                    statuses.append(("detail", http.get(f"{API}/tasks/{tasks[0]['id']}")))
                    statuses.append(("events", http.get(f"{API}/tasks/{tasks[0]['id']}/events")))
                    statuses.append(("list", http.get(f"{API}/tasks")))
                except httpx.HTTPError as exc:  # a request left unanswered fails the test
                    failures.append(exc)
                    return

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    terminated = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        terminated += _terminate_web_connections(dsn, settings["NAME"])
        time.sleep(0.1)
    stop.set()
    sender.join(60)

    assert terminated > 0 and not failures, failures
    assert statuses and all(r.status_code != 500 for _, r in statuses), [
        (n, r.status_code, r.text[:200]) for n, r in statuses if r.status_code == 500]
    unavailable = [r for _, r in statuses if r.status_code == 503]
    assert unavailable  # some requests did meet a terminated connection
    for response in unavailable:
        assert_unavailable(response)
    created = [r.json()["id"] for n, r in statuses if n == "create" and r.status_code == 202]
    assert created
    for follower in followers:
        assert follower.done.wait(60), (follower.statuses, follower.events[-3:])
        assert follower.statuses == [200]
        assert_each_event_once_then_done(follower.events)
    for task_id in created:
        wait_for(lambda task_id=task_id: client.get(task_id)["status"] in ("completed", "failed", "cancelled"),
                 f"task {task_id} to end", timeout=60)



def test_socketio_connects_through_a_redis_outage_and_its_subscription_resumes_after_it(outage_stack, redis, alice):
    import asyncio

    import socketio

    client = Client(outage_stack.web_url, alice.key)
    task = client.create(f"before the outage {sim(tokens=5)}")
    client.wait_terminal(task["id"])
    log = client.events(task["id"])["events"]

    async def follow_through_the_outage() -> list[dict[str, Any]]:
        updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sio = socketio.AsyncClient(reconnection=False)
        sio.on("task-update", updates.put_nowait)
        redis.stop()
        try:
            await sio.connect(outage_stack.web_url, auth={"token": alice.key}, transports=["websocket"],
                              wait_timeout=30)
            await sio.emit("subscribe-task", {"taskId": task["id"]})
            await asyncio.sleep(OUTAGE_S / 2)  # the log is unreadable meanwhile: the follower polls it
        finally:
            redis.start()
        seen = [await asyncio.wait_for(updates.get(), 60)]
        while seen[-1]["type"] != "done":
            seen.append(await asyncio.wait_for(updates.get(), 60))
        await sio.disconnect()
        return seen

    seen = asyncio.run(follow_through_the_outage())

    assert seen == [{**event, "taskId": task["id"]} for event in log]
