"""The HTTP entry point (mageagent/handlers.py), driven as an ASGI server drives it."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import orjson
import pytest

from mageagent.handlers import MageAgentASGIHandler, max_request_bytes


@pytest.fixture
def small_limits(settings: Any) -> int:
    settings.MAGEAGENT = {**settings.MAGEAGENT, "FILES_MAX_BYTES": 4096, "KNOWLEDGE_MAX_BYTES": 4096,
                          "MAX_BODY_BYTES": 4096}
    return max_request_bytes()


def request(path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes],
            method: str = "POST") -> tuple[list[dict[str, Any]], int]:
    """Serve one request; returns what was sent and how many body chunks the app read."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(messages):
            read += 1
            return messages[read - 1]
        await asyncio.sleep(3600)  # the client keeps the connection open
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(asyncio.wait_for(MageAgentASGIHandler()(scope, receive, send), 30))
    return sent, read


async def serve_one(handler: MageAgentASGIHandler, method: str, path: str, key: str) -> list[dict[str, Any]]:
    """One request with an empty body through `handler`, on the running loop; what it sent."""
    sent: list[dict[str, Any]] = []
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {key}".encode())],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    await handler(scope, receive, send)
    return sent


def status_and_body(sent: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], orjson.loads(body)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(small_limits):
    headers = [(b"content-type", b"application/json"), (b"content-length", str(small_limits + 1).encode())]

    sent, read = request("/mageagent/api/v1/files", headers, [b"x" * (small_limits + 1)])

    status, body = status_and_body(sent)
    assert status == 413 and read == 0
    assert body["error"]["code"] == "payload_too_large"
    assert body["error"]["details"]["max_bytes"] == small_limits


def test_a_streamed_body_is_cut_off_where_it_passes_the_limit(small_limits):
    chunks = [b"x" * 1024] * (small_limits // 1024 + 10)

    sent, read = request("/mageagent/api/v1/files", [(b"content-type", b"application/octet-stream")], chunks)

    status, body = status_and_body(sent)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert read <= small_limits // 1024 + 1 < len(chunks)


@pytest.fixture
def catalog_limit(monkeypatch: Any) -> list[Any]:
    """A path whose body limit is looked up as the prompt's is (from the database): set
    the list's item to a size, or to an exception for a database that is down."""
    from django.db import OperationalError

    from mageagent import handlers

    answer: list[Any] = [OperationalError("connection refused")]

    def limit() -> int:
        if isinstance(answer[0], Exception):
            raise answer[0]
        return int(answer[0])

    monkeypatch.setattr(handlers, "_path_limits", [(("/limited",), limit)])
    monkeypatch.setattr(handlers, "_limits_cache", {})
    return answer


@pytest.mark.django_db
def test_a_body_limit_that_needs_the_database_while_it_is_down_is_a_503_before_the_body_is_read(catalog_limit):
    sent, read = request("/limited", [(b"content-type", b"application/json"), (b"content-length", b"10")],
                         [b"x" * 10])

    status, body = status_and_body(sent)
    assert status == 503 and read == 0
    assert body["error"]["code"] == "unavailable" and body["error"]["details"]["dependency"] == "database"
    assert dict(sent[0]["headers"])[b"retry-after"] == b"2"


@pytest.mark.django_db
def test_the_last_body_limit_known_stands_while_the_database_is_down(catalog_limit, small_limits, monkeypatch):
    from django.db import OperationalError

    from mageagent import handlers

    catalog_limit[0] = 10 * small_limits
    headers = [(b"content-type", b"application/json"), (b"content-length", str(20 * small_limits).encode())]
    status, body = status_and_body(request("/limited", headers, [b""])[0])
    assert status == 413 and body["error"]["details"]["max_bytes"] == 10 * small_limits + 64 * 1024

    catalog_limit[0] = OSError("not a dependency")  # an error of another kind is not hidden
    expired = {path: (0.0, hit) for path, (_, hit) in handlers._limits_cache.items()}
    monkeypatch.setattr(handlers, "_limits_cache", expired)
    with pytest.raises(OSError):
        request("/limited", headers, [b""])

    catalog_limit[0] = OperationalError("connection refused")
    status, body = status_and_body(request("/limited", headers, [b""])[0])
    assert status == 413 and body["error"]["details"]["max_bytes"] == 10 * small_limits + 64 * 1024


@pytest.mark.django_db
def test_requests_under_the_limit_reach_their_view(small_limits):
    sent, _ = request("/healthz", [], [b""], method="GET")

    assert status_and_body(sent) == (200, {"status": "ok"})


@pytest.mark.django_db(transaction=True)
def test_cancels_waiting_for_their_worker_hold_up_no_other_request(alice, settings):
    from tasks.models import Task, TaskStatus

    settings.MAGEAGENT = {**settings.MAGEAGENT, "CANCEL_WAIT_S": 3.0}
    # Processing on a worker that never answers: the cancel waits out CANCEL_WAIT_S.
    # More of them than the API's own pool has threads (WEB_THREADS): they wait on theirs.
    count = settings.MAGEAGENT["WEB_THREADS"] + 2
    tasks = [Task.objects.create(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, prompt="p",
                                 status=TaskStatus.PROCESSING, worker="gone@nowhere") for _ in range(count)]
    finished: list[str] = []
    handler = MageAgentASGIHandler()

    async def serve(name: str, method: str, path: str) -> None:
        sent = await serve_one(handler, method, path, alice.key)
        assert sent[0]["status"] == 200, sent
        finished.append(name)

    async def main() -> None:
        cancels = [asyncio.ensure_future(serve("cancel", "POST", f"/mageagent/api/v1/tasks/{t.id}/cancel"))
                   for t in tasks]
        await asyncio.sleep(0.5)  # the cancels are waiting for the worker by now
        await serve("list", "GET", "/mageagent/api/v1/tasks")  # an API request, on the API's threads
        await asyncio.gather(*cancels)

    asyncio.run(asyncio.wait_for(main(), 30))

    assert finished == ["list"] + ["cancel"] * count
    assert {t.status for t in Task.objects.filter(pk__in=[t.id for t in tasks])} == {TaskStatus.CANCELLED}


@pytest.mark.django_db(transaction=True)
def test_a_websocket_cancel_waiting_for_its_worker_holds_up_no_other_socket(alice, settings):
    from channels.testing import WebsocketCommunicator

    from mageagent.asgi import application
    from mageagent.handlers import stream_db
    from tasks import events
    from tasks.models import Task, TaskStatus

    settings.MAGEAGENT = {**settings.MAGEAGENT, "CANCEL_WAIT_S": 3.0}
    task = Task.objects.create(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, prompt="p",
                               status=TaskStatus.PROCESSING, worker="gone@nowhere")

    async def main() -> float:
        ws = WebsocketCommunicator(application, f"/mageagent/ws?token={alice.key}",
                                   headers=[(b"host", b"testserver")])
        connected, _ = await ws.connect(timeout=10)
        assert connected
        await ws.send_json_to({"type": "cancel-task", "taskId": str(task.id)})
        await asyncio.sleep(0.5)  # the cancel is waiting for the worker by now
        # Another socket's database call (the threads every consumer shares) is not queued
        # behind it: it answers while the cancel still waits, before the cancel gives up on
        # the worker and closes the log itself.
        await stream_db(Task.objects.filter(pk=task.pk).exists)()
        closed_when_answered = events.is_closed(str(task.id))
        await ws.disconnect()
        return closed_when_answered

    closed_when_answered = asyncio.run(asyncio.wait_for(main(), 30))

    assert not closed_when_answered, "a consumer's database call waited behind a cancel"
    assert Task.objects.get(pk=task.pk).status == TaskStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_past_the_threads_and_the_queue_an_api_request_gets_a_503_at_once(alice, settings):
    settings.MAGEAGENT = {**settings.MAGEAGENT, "WEB_QUEUE_MAX": 2}
    capacity = settings.MAGEAGENT["WEB_THREADS"] + 2
    handler = MageAgentASGIHandler()
    release = threading.Event()
    serve = handler._serve

    def slow_serve(request: Any) -> Any:  # the API's requests hold their thread until released
        if request.path_info.startswith("/mageagent/api/v1/tasks") and not request.path_info.endswith(
                ("/cancel", "/stream")):
            release.wait(20)
        return serve(request)

    handler._serve = slow_serve  # type: ignore[method-assign]
    tasks_url = "/mageagent/api/v1/tasks"

    async def main() -> dict[str, Any]:
        held = [asyncio.ensure_future(serve_one(handler, "GET", tasks_url, alice.key)) for _ in range(capacity)]
        await asyncio.sleep(0.3)
        refused = await serve_one(handler, "GET", tasks_url, alice.key)
        health = await serve_one(handler, "GET", "/healthz", alice.key)
        cancel = await serve_one(handler, "POST", f"{tasks_url}/{uuid.uuid4()}/cancel", alice.key)
        stream = await serve_one(handler, "GET", f"{tasks_url}/{uuid.uuid4()}/stream", alice.key)
        search = await serve_one(handler, "POST", "/mageagent/api/v1/knowledge/search", alice.key)
        release.set()
        answered = await asyncio.gather(*held)
        after = await serve_one(handler, "GET", tasks_url, alice.key)
        return {"refused": refused, "health": health, "cancel": cancel, "stream": stream, "search": search,
                "held": answered, "after": after}

    out = asyncio.run(asyncio.wait_for(main(), 30))

    status, body = status_and_body(out["refused"])
    assert status == 503 and body["error"]["code"] == "unavailable"
    assert (b"retry-after", b"1") in [(k.lower(), v) for k, v in out["refused"][0]["headers"]]
    assert status_and_body(out["health"])[0] == 200  # never refused
    assert status_and_body(out["cancel"])[0] == 404  # reached its view (no such task)
    assert status_and_body(out["stream"])[0] == 404  # opening a stream is never refused either
    assert status_and_body(out["search"])[0] == 400  # nor a knowledge search (here: no query)
    assert [m[0]["status"] for m in out["held"]] == [200] * capacity  # those admitted are all served
    assert out["after"][0]["status"] == 200  # and once they are, requests are admitted again


@pytest.mark.django_db(transaction=True)
def test_a_websocket_subscription_does_not_wait_behind_the_thread_sensitive_thread(alice):
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from mageagent.asgi import application
    from tasks import events
    from tasks.models import Task

    task = Task.objects.create(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, prompt="p")
    events.append(str(task.id), events.encode("status", status="queued", attempt=1))
    release = threading.Event()

    async def main() -> tuple[dict[str, Any], bool]:
        # Anything holding the process's one thread-sensitive thread (channels' default for
        # database calls): a subscription's lookups run on threads of their own.
        blocker = asyncio.ensure_future(database_sync_to_async(release.wait)(20))
        await asyncio.sleep(0.1)
        ws = WebsocketCommunicator(application, f"/mageagent/ws?token={alice.key}", headers=[(b"host", b"testserver")])
        connected, _ = await ws.connect(timeout=10)
        assert connected
        await ws.send_json_to({"type": "subscribe-task", "taskId": str(task.id)})
        frame = await ws.receive_json_from(timeout=10)
        still_blocked = not blocker.done()
        release.set()
        await blocker
        await ws.disconnect()
        return frame, still_blocked

    frame, still_blocked = asyncio.run(asyncio.wait_for(main(), 30))

    assert frame["type"] == "task-update" and frame["data"]["seq"] == 1
    assert still_blocked
