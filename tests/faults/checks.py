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


def assert_ended_once(client: Client, task_id: str, content: str | None = None) -> dict[str, Any]:
    """The task ended with one final answer, and its log replays gapless to one `done` over
    SSE (from the start and resuming with Last-Event-ID) and the per-task WebSocket (?after)."""
    task = wait_terminal(client, task_id)
    whole = [e.data for e in client.sse(task_id, timeout=30).events]
    assert [e["seq"] for e in whole] == list(range(1, len(whole) + 1))
    assert [e["type"] for e in whole].count("done") == 1 and whole[-1]["type"] == "done"
    assert whole[-1]["status"] == task["status"]
    if task["status"] == "completed":
        assert task["result"]["content"] == answer_from_chunks(whole) == whole[-1]["result"]["content"]
        if content is not None:
            assert task["result"]["content"] == content
    middle = len(whole) // 2
    resumed = client.sse(task_id, last_event_id=middle, timeout=30)
    assert [e.data["seq"] for e in resumed.events] == list(range(middle + 1, len(whole) + 1))
    frames = client.ws_task(task_id, after=middle, timeout=30)
    assert [f["seq"] for f in frames] == list(range(middle + 1, len(whole) + 1))
    return task
