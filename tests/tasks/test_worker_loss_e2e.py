"""A worker that dies mid-task loses nothing, and a task never runs twice at once."""

from __future__ import annotations

import signal
import uuid

import httpx
import pytest

from tasks import housekeeping
from tasks.models import Task
from tasks.runtime.heartbeat import is_alive
from tests.clients import Client, answer_from_chunks, sim, tokens, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def sim_requests(stack, key: str) -> list[dict]:
    return httpx.get(f"{stack.sim_url}/_sim/requests/{key}").json()


def test_a_task_whose_worker_is_killed_runs_again_elsewhere(stack, alice):
    client = Client(stack.web_url, alice.key)
    stack.stop_process("worker")
    doomed = stack.start_worker("doomed")
    try:
        key = f"killed-{uuid.uuid4()}"
        task = client.create(f"survive {sim(tokens=60, interval_ms=25, key=key)}")
        wait_for(lambda: sim_requests(stack, key), "the first attempt to reach the provider")
        worker_id = Task.objects.get(pk=task["id"]).worker

        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(10)
        # No beat: the surviving worker's reconciler (under the lease) runs it again.
        stack.start_worker("worker")
        wait_for(lambda: not is_alive(worker_id), "the dead worker's heartbeat to expire")
        finished = client.wait_terminal(task["id"])
        events = [e.data for e in client.sse(task["id"]).events]
    finally:
        stack.stop_process("doomed")
        if "worker" not in stack.processes:
            stack.start_worker("worker")

    assert finished["status"] == "completed" and finished["attempts"] == 2
    assert finished["result"]["content"] == answer_from_chunks(events) == tokens(60)
    assert [e["type"] for e in events].count("reset") == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_a_partitioned_worker_is_fenced_off_when_its_task_is_rerun(stack, alice):
    client = Client(stack.web_url, alice.key)
    key = f"zombie-{uuid.uuid4()}"
    task = client.create(f"zombie {sim(tokens=80, interval_ms=25, key=key)}")
    wait_for(lambda: sim_requests(stack, key), "the first attempt to reach the provider")

    # The reconciler believes the worker is gone (a network partition) and reruns the task
    # while the first attempt is still streaming.
    assert housekeeping._requeue_lost(Task.objects.get(pk=task["id"])) == "requeued"
    finished = client.wait_terminal(task["id"])

    events = [e.data for e in client.sse(task["id"]).events]
    first, _ = wait_for(lambda: len(sim_requests(stack, key)) == 2 and sim_requests(stack, key),
                             "both attempts to be recorded")
    assert finished["status"] == "completed"
    assert finished["result"]["content"] == answer_from_chunks(events) == tokens(80)
    assert [e["type"] for e in events].count("done") == 1
    # The first attempt stopped streaming instead of finishing alongside the second.
    assert wait_for(lambda: sim_requests(stack, key)[0]["status"] != "streaming", "the zombie to stop")
    assert sim_requests(stack, key)[0]["status"] == "client_closed"
    assert first["tokens_sent"] < 80
