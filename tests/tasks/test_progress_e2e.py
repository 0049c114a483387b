"""Honest progress in the running service: a streaming task's `progress` grows to its final
token count, its `processing` event carries the estimate, and finishing it measures its model."""

from __future__ import annotations

import time

import pytest

from tasks import events, progress
from tests.clients import Client, sim, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_progress_grows_monotonically_to_the_final_token_count(stack, alice):
    client = Client(stack.web_url, alice.key)
    task_id = client.create(f"count {sim(tokens=60, interval_ms=50)}")["id"]
    seen: list[dict] = []
    measured_before = None
    while (task := client.get(task_id))["status"] not in ("completed", "failed", "cancelled"):
        seen.append(task)
        if task["status"] == "processing" and measured_before is None:
            measured_before = measured(task["routing"]["model"])
        time.sleep(0.1)

    running = [t for t in seen if t["status"] == "processing"]
    counts = [t["progress"]["tokens"] for t in running] + [task["progress"]["tokens"]]
    assert counts == sorted(counts)
    assert any(0 < n < 60 for n in counts)  # it moved while the task ran
    assert task["progress"]["tokens"] == task["result"]["usage"]["completion_tokens"]
    assert all(t["progress"]["expected_tokens"] for t in running)
    assert all(t["estimated_duration_ms"] > 0 for t in running)
    [processing] = [e for e in client.events(task_id)["events"] if e["type"] == "status"
                    and e["status"] == "processing"]
    assert processing["progress"]["tokens"] == 0 and processing["progress"]["expected_tokens"] > 0
    assert processing["estimated_duration_ms"] > 0
    # Finishing it folded its pace into its model's speed, which later estimates use.
    wait_for(lambda: measured(task["routing"]["model"]) > (measured_before or 0), "the model's speed recorded")


def measured(model: str) -> int:
    return int(events.sync_client().hget(progress.speed_key(model), "n") or 0)
