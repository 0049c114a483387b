"""Every task answered 202 ends once, with one final answer and a gapless log, through the
faults production meets: Redis restarted (with its data, or empty), workers SIGKILLed and
SIGTERMed, the provider failing, dropping and stalling. Web + worker only: no beat runs;
the workers reconcile under their lease."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest
import redis

from tasks.models import Task
from tasks.runtime.lease import lease_key
from tests.clients import API, Client, answer_from_chunks, parse_sse, sim, tokens, wait_for
from tests.faults.checks import assert_ended_once, record_recovery, wait_terminal
from tests.faults.test_web_outages import SocketFollower

# A shared 2-core machine may run these several times slower than a quiet one.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

LONG = {"tokens": 60, "interval_ms": 50}  # ~3 s of streaming


def streaming(client: Client, label: str, n: int) -> list[str]:
    """n tasks, returned once each is streaming (processing)."""
    ids = [client.create(f"{label} {i} {sim(**LONG)}")["id"] for i in range(n)]
    wait_for(lambda: all(client.get(i)["status"] == "processing" for i in ids), f"{label} tasks to stream")
    return ids


def post_during(client: Client, label: str, seconds: float) -> tuple[list[str], list[int]]:
    """Submit tasks for `seconds` while a dependency is down: (ids accepted, every status)."""
    accepted, statuses = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            response = client.http.post(f"{API}/tasks", json={"prompt": f"{label} {sim(tokens=20)}"}, timeout=10)
        except httpx.HTTPError:
            continue
        statuses.append(response.status_code)
        if response.status_code == 202:
            accepted.append(response.json()["id"])
        time.sleep(0.5)
    return accepted, statuses


class Follower(threading.Thread):
    """A client following a task's SSE stream as EventSource does: when the stream ends
    or goes silent past the ping interval, it reconnects with Last-Event-ID."""

    def __init__(self, client: Client, task_id: str) -> None:
        super().__init__(daemon=True)
        self.client, self.task_id = client, task_id
        self.events: list[dict[str, Any]] = []

    def run(self) -> None:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            headers = {"Last-Event-ID": str(self.events[-1]["seq"])} if self.events else {}
            try:
                with self.client.http.stream("GET", f"{API}/tasks/{self.task_id}/stream", headers=headers,
                                             timeout=httpx.Timeout(10, read=20)) as response:
                    if response.status_code != 200:
                        time.sleep(1)
                        continue
                    for item in parse_sse(response.iter_lines()):
                        if not isinstance(item, str):
                            self.events.append(item.data)
                            if item.data["type"] == "done":
                                return
            except httpx.HTTPError:
                time.sleep(0.5)


def test_a_redis_restart_with_its_data_loses_and_repeats_nothing(workers_running, private_redis, alice):
    client = Client(workers_running.web_url, alice.key)
    running = streaming(client, "aof", 3)
    followers = [Follower(client, task_id) for task_id in running]
    for follower in followers:
        follower.start()
    wait_for(lambda: all(f.events for f in followers), "the followers to see events")

    private_redis.kill()
    during, statuses = post_during(client, "during the outage", 5)
    private_redis.start()
    record_recovery("Redis restarted with its data (5 s down)", client, running + during, time.monotonic())

    assert 500 not in statuses
    for task_id in running:
        assert assert_ended_once(client, task_id, tokens(60))["status"] == "completed"
    for task_id in during:
        assert assert_ended_once(client, task_id, tokens(20))["status"] == "completed"
    for follower in followers:
        follower.join(60)
        seqs = [e["seq"] for e in follower.events]
        assert seqs == list(range(1, len(seqs) + 1)) and follower.events[-1]["type"] == "done"


def test_a_redis_restarted_empty_loses_no_accepted_task(workers_running, private_redis, alice, charlie):
    stack, client = workers_running, Client(workers_running.web_url, alice.key)
    other = Client(workers_running.web_url, charlie.key)
    # Two threads: two tasks stream while the others wait, the fair window's (8) in the
    # broker's queue and the rest in the fair queues (tasks/fair.py).
    stack.stop_process("worker")
    stack.start_worker("worker", concurrency=2)
    try:
        running = streaming(client, "empty", 2)
        waiting = [(c, c.create(f"waiting {i} {sim(tokens=10)}")["id"]) for i in range(6) for c in (client, other)]
        sse, socket = Follower(client, running[0]), SocketFollower(workers_running.web_url, alice.key, running[1])
        sse.start()
        socket.start()
        wait_for(lambda: sse.events and socket.frames, "the followers to see events")

        private_redis.restart(down_s=3, empty=True)
        ended_at = time.monotonic()
        for owner, task_id in waiting:
            wait_terminal(owner, task_id)
        record_recovery("Redis restarted empty (3 s down)", client, running, ended_at)

        # The streaming tasks lost their logs and the waiting ones their messages (and their
        # places in the fair queues); the database's ledger runs every one of them again. A
        # running task's log continues after the last event its attempt wrote.
        for task_id in running:
            assert assert_ended_once(client, task_id, tokens(60), rebuilt=True)["status"] == "completed"
        for owner, task_id in waiting:
            assert assert_ended_once(owner, task_id, tokens(10))["status"] == "completed"
        # Followers connected across the restart keep their positions: each event once, in
        # order, then `done`; the new attempt's `reset` drops the lost attempt's chunks.
        sse.join(60)
        socket.done.wait(60)
        for task_id, seen in ((running[0], sse.events), (running[1], [f for f in socket.frames if "seq" in f])):
            seqs = [e["seq"] for e in seen]
            assert seqs == sorted(set(seqs)) and seen[-1]["type"] == "done", seqs
            assert answer_from_chunks(seen) == tokens(60) == client.get(task_id)["result"]["content"]
    finally:
        stack.stop_process("worker")
        stack.start_worker("worker")


def test_a_worker_stopped_for_a_deploy_finishes_or_hands_back_its_tasks(workers_running, alice):
    stack, client = workers_running, Client(workers_running.web_url, alice.key)
    running = streaming(client, "deploy", 3)

    old = stack.processes.pop("worker")
    old.proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown
    queued_meanwhile = [client.create(f"while deploying {i} {sim(tokens=10)}")["id"] for i in range(2)]
    old.proc.wait(60)
    stack.start_worker("worker")
    record_recovery("worker SIGTERM, a new one started", client, running + queued_meanwhile, time.monotonic())

    for task_id in running:
        assert assert_ended_once(client, task_id, tokens(60))["status"] == "completed"
    for task_id in queued_meanwhile:
        assert assert_ended_once(client, task_id, tokens(10))["status"] == "completed"


def test_tasks_of_a_sigkilled_worker_end_once_on_the_other(workers_running, alice):
    stack, client = workers_running, Client(workers_running.web_url, alice.key)
    doomed = stack.start_worker("doomed")
    try:
        ids = [client.create(f"kill {i} {sim(tokens=60, interval_ms=50)}")["id"] for i in range(8)]
        wait_for(lambda: all(client.get(i)["status"] == "processing" for i in ids), "the tasks to stream")

        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(10)
        record_recovery("one of two workers SIGKILLed", client, ids, time.monotonic())

        for task_id in ids:
            assert assert_ended_once(client, task_id, tokens(60))["status"] == "completed"
    finally:
        stack.stop_process("doomed")


def test_provider_storms_drops_and_stalls_end_every_task_once(workers_running, alice):
    client = Client(workers_running.web_url, alice.key)
    recovering = [
        client.create(f"503 storm {sim(tokens=10, error=503, error_times=2, key='s503-' + alice.key[-8:])}"),
        client.create(f"429 storm {sim(tokens=10, error=429, error_times=2, key='s429-' + alice.key[-8:])}"),
        client.create(f"dropped {sim(tokens=30, fail_after_tokens=10, error_times=1, key='drop-' + alice.key[-8:])}"),
    ]
    # A provider that stops sending without closing: every attempt gives up after
    # MAGEAGENT_LLM_TIMEOUT_S without data, and the task fails once out of attempts.
    stalled = client.create(f"stall {sim(tokens=5, interval_ms=600_000)}")

    for task in recovering:
        assert assert_ended_once(client, task["id"])["status"] == "completed"
    ended = assert_ended_once(client, stalled["id"])
    assert ended["status"] == "failed" and ended["attempts"] == 3


def test_a_sigkilled_reconcile_lease_holder_hands_reconciling_to_the_other_worker(workers_running, private_redis,
                                                                                  alice):
    stack, client = workers_running, Client(workers_running.web_url, alice.key)
    stack.start_worker("other")
    broker = redis.Redis.from_url(private_redis.url)
    try:
        ids = [client.create(f"lease {i} {sim(tokens=60, interval_ms=50)}")["id"] for i in range(8)]
        wait_for(lambda: all(client.get(i)["status"] == "processing" for i in ids), "the tasks to stream")
        holder = wait_for(lambda: broker.get(lease_key()), "a worker to hold the reconcile lease").decode()
        by_pid = {str(p.proc.pid): name for name, p in stack.processes.items() if name in ("worker", "other")}
        doomed = by_pid[holder.split(":")[1]]
        survivor = stack.processes["other" if doomed == "worker" else "worker"]
        orphans = list(Task.objects.filter(pk__in=ids, worker=holder).values_list("pk", flat=True))

        stack.processes[doomed].proc.send_signal(signal.SIGKILL)
        stack.processes[doomed].proc.wait(10)
        record_recovery("the reconcile lease holder SIGKILLed (one of two)", client, ids, time.monotonic())

        # The survivor took the lease over and ran the dead holder's tasks again.
        assert broker.get(lease_key()).decode().split(":")[1] == str(survivor.proc.pid)
        for task_id in ids:
            assert assert_ended_once(client, task_id, tokens(60))["status"] == "completed"
        assert orphans and all(client.get(str(i))["attempts"] == 2 for i in orphans)
    finally:
        # A dead "worker" is started again by the workers_running fixture.
        stack.stop_process("other")
