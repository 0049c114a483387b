"""Socket.IO at /socket.io/ on the running service: the seed's client snippet under Node
(socket.io-client from npm), and python-socketio's client for resume, tenancy, cancel and
the rate limit."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import socketio

from mageagent.ratelimit import _keys
from mageagent.tenancy.models import App
from tasks import events
from tests.clients import Client, answer_from_chunks, sim, tokens, wait_for
from tests.conftest import make_persona

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SEED_SNIPPET = Path(__file__).resolve().parent.parent / "js" / "seed_socketio.js"
NODE_CLIENT = SEED_SNIPPET.parent.parent / "node_modules" / "socket.io-client"
needs_node = pytest.mark.skipif(shutil.which("node") is None or not NODE_CLIENT.is_dir(),
                                reason="needs node and tests/node_modules (scripts/test.sh installs them)")


@pytest.fixture
def client(stack, alice) -> Client:
    return Client(stack.web_url, alice.key)


def run_seed_snippet(url: str, key: str, task_id: str, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["node", str(SEED_SNIPPET), url, key, task_id, how],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def with_task_id(log: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [{**event, "taskId": task_id} for event in log]


@needs_node
def test_the_seeds_snippet_reads_the_task_with_the_key_in_auth_query_or_over_websocket_only(stack, client):
    task = client.create(f"seed {sim(tokens=40, interval_ms=10)}")

    # The same task, followed live three ways at once: auth (long-polling, then upgraded),
    # the key in the query, and WebSocket from the start.
    running = {how: run_seed_snippet(stack.web_url, client.key or "", task["id"], how)
               for how in ("auth", "query", "websocket")}
    seen = {how: outcome(proc) for how, proc in running.items()}

    log = client.events(task["id"])["events"]
    for how, read in seen.items():
        assert read.get("text") == tokens(40), (how, read)
        assert read["updates"] == with_task_id(log, task["id"]), how


@needs_node
def test_the_seeds_snippet_with_a_wrong_key_gets_connect_error(stack, client):
    task = client.create(f"nope {sim(tokens=1)}")

    read = outcome(run_seed_snippet(stack.web_url, "not-a-key", task["id"], "auth"))

    assert read["connect_error"] == "an API key is required"
    assert read["data"]["error"]["code"] == "authentication_failed"


class SocketIOClient:
    """python-socketio's client, its task-update and error events in one queue."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.sio.on("task-update", lambda data: self.inbox.put_nowait(("task-update", data)))
        self.sio.on("error", lambda data: self.inbox.put_nowait(("error", data)))

    async def connect(self, url: str, key: str) -> SocketIOClient:
        await self.sio.connect(url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
        return self

    async def next(self) -> tuple[str, dict[str, Any]]:
        return await asyncio.wait_for(self.inbox.get(), 60)

    async def updates_until(self, *, done: bool = True, count: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            kind, data = await self.next()
            assert kind == "task-update", data
            out.append(data)
            if (done and data["type"] == "done") or (count is not None and len(out) >= count):
                return out


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_resuming_on_a_new_socket_and_resubscribing_on_the_same_one_miss_and_repeat_nothing(stack, client, alice):
    task = client.create(f"resume {sim(tokens=80, interval_ms=20)}")

    async def main() -> list[dict[str, Any]]:
        first = await SocketIOClient().connect(stack.web_url, alice.key)
        await first.sio.emit("subscribe-task", {"taskId": task["id"]})
        seen = await first.updates_until(done=False, count=6)
        await first.sio.disconnect()  # dropped mid-stream

        second = await SocketIOClient().connect(stack.web_url, alice.key)
        await second.sio.emit("subscribe-task", {"taskId": task["id"], "after": seen[-1]["seq"]})
        seen += await second.updates_until(done=False, count=6)
        await second.sio.emit("unsubscribe-task", {"taskId": task["id"]})
        await second.sio.emit("subscribe-task", {"taskId": task["id"], "after": seen[-1]["seq"]})
        seen += await second.updates_until()
        await second.sio.disconnect()
        return seen

    seen = run(main())

    log = client.events(task["id"])["events"]
    assert seen == with_task_id(log, task["id"])
    assert [e["seq"] for e in seen] == list(range(1, len(log) + 1))
    assert answer_from_chunks(seen) == tokens(80)


def test_another_companys_task_is_not_found_and_cannot_be_cancelled(stack, client, charlie):
    task = client.create(f"alice's {sim(tokens=30, interval_ms=20)}")

    async def main() -> list[tuple[str, dict[str, Any]]]:
        intruder = await SocketIOClient().connect(stack.web_url, charlie.key)
        await intruder.sio.emit("subscribe-task", {"taskId": task["id"]})
        await intruder.sio.emit("cancel-task", {"taskId": task["id"]})
        answers = [await intruder.next(), await intruder.next()]
        await intruder.sio.disconnect()
        return answers

    answers = run(main())

    assert [(kind, data["taskId"], data["error"]["code"]) for kind, data in answers] == [
        ("error", task["id"], "not_found")] * 2
    assert client.wait_terminal(task["id"])["status"] == "completed"


def test_cancel_task_stops_the_task_and_the_subscriber_gets_its_done(stack, client, alice):
    task = client.create(f"long {sim(tokens=400, interval_ms=50)}")

    async def main() -> list[dict[str, Any]]:
        sock = await SocketIOClient().connect(stack.web_url, alice.key)
        await sock.sio.emit("subscribe-task", {"taskId": task["id"]})
        seen = []
        while not any(e["type"] == "chunk" for e in seen):
            seen += await sock.updates_until(done=False, count=1)
        await sock.sio.emit("cancel-task", {"taskId": task["id"]})
        seen += await sock.updates_until()
        await sock.sio.disconnect()
        return seen

    seen = run(main())

    assert seen[-1]["done"] is True and seen[-1]["status"] == "cancelled"
    assert answer_from_chunks(seen) == seen[-1]["result"]["content"]
    # The row is cancelled at once; its partial result is written just after the log closed.
    finished = wait_for(lambda: (t := client.get(task["id"]))["result"] and t, "the partial result")
    assert finished["status"] == "cancelled" and finished["result"]["content"] == answer_from_chunks(seen)


def test_a_wrong_key_is_refused_at_the_handshake(stack):
    refusals: list[Any] = []

    async def main() -> None:
        sock = SocketIOClient()
        sock.sio.on("connect_error", refusals.append)
        await sock.connect(stack.web_url, "not-a-key")

    with pytest.raises(socketio.exceptions.ConnectionError):
        run(main())
    assert refusals == [{"message": "an API key is required",
                         "data": {"error": {"code": "authentication_failed", "message": "an API key is required",
                                            "details": {}}}}]


def test_bad_subscriptions_are_error_events_and_the_socket_stays_open(stack, client, alice):
    task = client.create(f"fine {sim(tokens=3)}")

    async def main() -> list[tuple[str, dict[str, Any]]]:
        sock = await SocketIOClient().connect(stack.web_url, alice.key)
        await sock.sio.emit("subscribe-task", {"taskId": task["id"], "after": -1})
        await sock.sio.emit("subscribe-task", task["id"])
        await sock.sio.emit("subscribe-task", {"taskId": "not-a-uuid"})
        answers = [await sock.next() for _ in range(3)]
        await sock.sio.emit("subscribe-task", {"taskId": task["id"]})
        answers.append(("done", (await sock.updates_until())[-1]))
        await sock.sio.disconnect()
        return answers

    answers = run(main())

    assert sorted(data["error"]["code"] for kind, data in answers[:3]) == [
        "not_found", "validation_error", "validation_error"]
    assert answers[3][1]["type"] == "done"


def test_each_subscription_counts_against_the_apps_rate_limit(stack, client):
    dave = make_persona("dave", "acme", "limited")
    App.objects.filter(pk=dave.tenant.app_id).update(requests_per_minute=12)  # a bucket of 2
    daves = Client(stack.web_url, dave.key)
    tasks = [daves.create(f"limited {sim(tokens=3)}") for _ in range(2)]
    events.sync_client().delete(*_keys(f"app:{dave.tenant.app_id}"))  # the creates took from it

    async def main() -> list[tuple[str, dict[str, Any]]]:
        sock = await SocketIOClient().connect(stack.web_url, dave.key)  # takes one
        await sock.sio.emit("subscribe-task", {"taskId": tasks[0]["id"]})  # takes the other
        first = await sock.updates_until()
        await sock.sio.emit("subscribe-task", {"taskId": tasks[1]["id"]})  # finds none
        refused = await sock.next()
        await sock.sio.disconnect()
        return [("done", first[-1]), refused]

    (_, done), (kind, refused) = run(main())

    assert done["type"] == "done"
    assert kind == "error" and refused["taskId"] == tasks[1]["id"]
    assert refused["error"]["code"] == "rate_limited"
