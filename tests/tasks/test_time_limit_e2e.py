"""The soft time limit in the running service: a worker whose limit is 1 s stops a longer
answer, fails the task with `timeout` and closes the provider stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import Client, sim, wait_for
from tests.stack import Stack, own_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STREAMED_TOKENS = 200  # at 50 ms each: ten times the limit


@pytest.fixture(scope="module")
def short_stack(django_db_setup: None, django_db_blocker: Any) -> Iterator[Stack]:
    """A stack of its own whose worker allows 1 s per task (on its own queue, so the
    session stack's worker never takes its tasks)."""
    from django.db import connection

    from tests.stack import database_url

    queue = own_queue("timelimit")
    running = Stack(database_url(connection.settings_dict), extra_env={
        "MAGEAGENT_TASK_SOFT_TIME_LIMIT": "1", "MAGEAGENT_TASK_HARD_TIME_LIMIT": "30",
        "MAGEAGENT_QUEUE": queue}).start()
    try:
        yield running
    finally:
        running.stop()


def sim_requests(stack: Stack, key: str) -> list[dict[str, Any]]:
    return httpx.get(f"{stack.sim_url}/_sim/requests/{key}").json()


def test_a_task_streaming_past_its_soft_time_limit_fails_with_timeout(short_stack, alice):
    client = Client(short_stack.web_url, alice.key)
    key = f"slow-{uuid.uuid4()}"

    task = client.wait_terminal(client.create(f"slow {sim(tokens=STREAMED_TOKENS, interval_ms=50, key=key)}")["id"])
    events = [e.data for e in client.sse(task["id"]).events]

    assert task["status"] == "failed" and task["attempts"] == 1
    assert task["error"]["code"] == "timeout"
    done = events[-1]
    assert (done["type"], done["done"], done["status"]) == ("done", True, "failed")
    assert done["error"]["code"] == "timeout"
    assert [e["type"] for e in events].count("done") == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # The provider stream was closed, not read to its end, and a timeout is not retried.
    record = wait_for(lambda: (r := sim_requests(short_stack, key)[0])["status"] != "streaming" and r,
                      "the simulator to see the stream end")
    assert record["status"] == "client_closed"
    assert record["tokens_sent"] < STREAMED_TOKENS
    assert len(sim_requests(short_stack, key)) == 1
