"""Waiting tasks are taken highest `priority` first, in the running service."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.clients import Client, sim, tokens

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def test_a_higher_priority_task_queued_later_runs_before_a_lower_one(stack, alice):
    client = Client(stack.web_url, alice.key)
    stack.stop_process("worker")
    try:
        # Queued while no worker reads: arrival order alone would run `low` first.
        low = client.create(f"low {sim(tokens=5, interval_ms=10)}", priority=1)
        high = client.create(f"high {sim(tokens=5, interval_ms=10)}", priority=8)
        # One slot and one prefetched message: the worker takes one task at a time.
        stack.start_worker("serial", concurrency=1)
        low_done, high_done = client.wait_terminal(low["id"]), client.wait_terminal(high["id"])
    finally:
        if "serial" in stack.processes:
            stack.stop_process("serial")
        stack.start_worker("worker")

    assert (low_done["status"], high_done["status"]) == ("completed", "completed")
    assert high_done["result"]["content"] == low_done["result"]["content"] == tokens(5)
    assert at(high_done["completed_at"]) <= at(low_done["started_at"])
