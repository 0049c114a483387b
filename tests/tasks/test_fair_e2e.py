"""Fair scheduling in the running service: a tenant's flood does not hold back the tasks
of tenants that come after it. Tasks are posted while no worker reads, then one worker
slot and a window of one take them: the order in which they start is the order the fair
dispatch picked them (arrival order alone would run the flood first)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest

from tests.clients import Client, sim, tokens
from tests.stack import Stack, own_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FLOOD = f"flood {sim(tokens=4, interval_ms=20)}"
SHORT = f"short {sim(tokens=2, interval_ms=10)}"


@pytest.fixture(scope="module")
def fair_stack(django_db_setup: None, django_db_blocker: Any) -> Iterator[Stack]:
    """A stack of its own (its own queue) with a fair window of one, and no worker until a test starts one."""
    from django.db import connection

    from tests.stack import database_url

    running = Stack(database_url(connection.settings_dict), extra_env={
        "MAGEAGENT_QUEUE": own_queue("fair"), "MAGEAGENT_FAIR_WINDOW": "1"}).start()
    try:
        running.stop_process("worker")
        yield running
    finally:
        running.stop()


@contextmanager
def one_slot(stack: Stack) -> Iterator[None]:
    stack.start_worker("serial", concurrency=1)
    try:
        yield
    finally:
        stack.stop_process("serial")


def start_order(stack: Stack, clients: dict[str, Client], created: list[tuple[str, str]]) -> str:
    """The tenants' letters in the order their tasks started, once all finished."""
    with one_slot(stack):
        done = [(who, clients[who].wait_terminal(task_id, timeout=120)) for who, task_id in created]
    assert all(task["status"] == "completed" and task["result"]["content"] for _, task in done), done
    return "".join(who for who, task in sorted(done, key=lambda d: datetime.fromisoformat(d[1]["started_at"])))


def test_a_second_companys_tasks_start_between_a_floods_not_after_it(fair_stack, alice, charlie):
    clients = {"a": Client(fair_stack.web_url, alice.key), "c": Client(fair_stack.web_url, charlie.key)}
    created = [("a", clients["a"].create(FLOOD)["id"]) for _ in range(6)]
    created += [("c", clients["c"].create(SHORT)["id"]) for _ in range(2)]

    order = start_order(fair_stack, clients, created)

    # The flood's first task was sent as it came (nothing waited); then the companies take turns.
    assert order[:4] in ("acac", "acca"), order


def test_three_tenants_share_by_company_then_by_app(fair_stack, alice, bob, charlie):
    clients = {"a": Client(fair_stack.web_url, alice.key), "b": Client(fair_stack.web_url, bob.key),
               "c": Client(fair_stack.web_url, charlie.key)}
    created = [("a", clients["a"].create(FLOOD)["id"]) for _ in range(6)]
    created += [("b", clients["b"].create(SHORT)["id"]) for _ in range(2)]
    created += [("c", clients["c"].create(SHORT)["id"]) for _ in range(2)]

    order = start_order(fair_stack, clients, created)

    # Acme (alice's web app, bob's mobile app) and globex take turns; within acme's turns
    # bob's app takes its own against alice's flood: every late task starts before the
    # flood's third.
    third_of_flood = [i for i, who in enumerate(order) if who == "a"][2]
    assert order[1] == "c" and max(order.rindex("b"), order.rindex("c")) < third_of_flood, order


def test_priority_holds_within_an_app(fair_stack, alice):
    client = Client(fair_stack.web_url, alice.key)
    first = client.create(FLOOD)
    low = client.create(f"low {sim(tokens=2, interval_ms=10)}", priority=1)
    high = client.create(f"high {sim(tokens=2, interval_ms=10)}", priority=8)

    with one_slot(fair_stack):
        done = [client.wait_terminal(t["id"]) for t in (first, low, high)]

    assert done[1]["result"]["content"] == done[2]["result"]["content"] == tokens(2)
    started = [datetime.fromisoformat(t["started_at"]) for t in done]
    assert started[0] < started[2] < started[1]  # the first was sent as it came; then high before low
