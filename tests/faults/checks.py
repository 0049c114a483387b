"""What a user notices after a fault, asserted the same way in every scenario."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.clients import API, Client, answer_from_chunks

TERMINAL = ("completed", "failed", "cancelled")

# Seconds from a dependency coming back (or a fault's end) until every task of the scenario
# ended: measured, printed at the end of the run (conftest.py), never asserted.
RECOVERY_S: dict[str, float] = {}


def record_recovery(scenario: str, client: Client, task_ids: list[str], since: float) -> None:
    for task_id in task_ids:
        wait_terminal(client, task_id)
    RECOVERY_S[scenario] = time.monotonic() - since


def wait_terminal(client: Client, task_id: str, timeout: float = 150.0) -> dict[str, Any]:
    """Poll the task (not its stream: a stream may be cut by the fault) until it ended.
    Answers other than 200 while a dependency is down are allowed, except a 500."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = client.http.get(f"{API}/tasks/{task_id}", timeout=10)
        except httpx.HTTPError:
            response = None
        if response is not None:
            assert response.status_code != 500, response.text
            if response.status_code == 200 and response.json()["status"] in TERMINAL:
                return response.json()
        assert time.monotonic() < deadline, f"task {task_id} did not end"
        time.sleep(0.25)


def assert_ended_once(client: Client, task_id: str, content: str | None = None, *,
                      rebuilt: bool = False) -> dict[str, Any]:
    """The task ended with one final answer, and its log replays gapless to one `done` over
    SSE (from the start and resuming with Last-Event-ID) and the per-task WebSocket (?after).
    A `rebuilt` log (Redis restarted empty under a running attempt) lost its first events and
    continues after the last seq that attempt wrote: gapless from there."""
    task = wait_terminal(client, task_id)
    whole = [e.data for e in client.sse(task_id, timeout=30).events]
    seqs = [e["seq"] for e in whole]
    first = seqs[0] if rebuilt and seqs else 1
    assert seqs == list(range(first, first + len(whole))), seqs
    assert [e["type"] for e in whole].count("done") == 1 and whole[-1]["type"] == "done"
    assert whole[-1]["status"] == task["status"]
    if task["status"] == "completed":
        assert task["result"]["content"] == answer_from_chunks(whole) == whole[-1]["result"]["content"]
        if content is not None:
            assert task["result"]["content"] == content
    middle = seqs[len(whole) // 2 - 1] if len(whole) > 1 else first - 1
    rest = [s for s in seqs if s > middle]
    resumed = client.sse(task_id, last_event_id=middle, timeout=30)
    assert [e.data["seq"] for e in resumed.events] == rest, ([e.data["seq"] for e in resumed.events], rest)
    frames = client.ws_task(task_id, after=middle, timeout=30)
    assert [f["seq"] for f in frames] == rest, ([f["seq"] for f in frames], rest)
    return task
