"""Webhooks in the running service: a worker delivers each finished task's event to a real
endpoint, signed (verified with the standardwebhooks reference library), retried with the
same webhook-id, and a delivery whose message was lost is sent by the workers' sweep."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from tests.clients import API, Client, sim, tokens, wait_for
from tests.stack import Stack, own_queue
from tests.webhooks.receiver import Received, Receiver
from webhooks.models import Delivery, Webhook

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def hooks_stack(django_db_setup: None, django_db_blocker: Any) -> Iterator[Stack]:
    """A stack of its own (on its own queue) whose processes admit endpoints on 127.0.0.1,
    retry after half a second and sweep every second."""
    from django.db import connection

    from tests.stack import database_url

    queue = own_queue("hooks")
    running = Stack(database_url(connection.settings_dict), extra_env={
        "MAGEAGENT_FETCH_ALLOWED_HOSTS": "127.0.0.1", "MAGEAGENT_WEBHOOK_RETRY_SCHEDULE": "0.5,0.5,0.5",
        "MAGEAGENT_WEBHOOK_SWEEP_S": "1", "MAGEAGENT_QUEUE": queue}).start()
    try:
        yield running
    finally:
        running.stop()


def register(client: Client, url: str) -> dict[str, Any]:
    created = client.http.post(f"{API}/webhooks", json={"url": url})
    assert created.status_code == 201, created.text
    return created.json()


def arrivals(receiver: Receiver, path: str, n: int) -> list[Received]:
    return wait_for(lambda: len(got := receiver.at(path)) >= n and got, f"{n} deliveries at {path}", timeout=60)


def test_a_completed_task_is_delivered_again_after_a_500_with_the_same_id(hooks_stack, alice, receiver):
    client = Client(hooks_stack.web_url, alice.key)
    hook = register(client, receiver.url("/done"))
    receiver.answers["/done"] = [500]

    task = client.wait_terminal(client.create(f"hello {sim(tokens=5)}")["id"])

    first, second = arrivals(receiver, "/done", 2)
    assert (first.answered, second.answered) == (500, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    for received in (first, second):
        payload = received.verified(hook["secret"])
        assert payload["type"] == "task.completed"
        assert payload["data"]["id"] == task["id"] and payload["data"]["status"] == "completed"
        assert payload["data"]["result"]["content"] == task["result"]["content"]
    listed = wait_for(lambda: (d := client.http.get(f"{API}/webhooks/{hook['id']}/deliveries").json()["results"])
                      and d[0]["status"] == "succeeded" and d, "the delivery recorded")
    assert [(d["id"], d["attempts"], d["last_status_code"]) for d in listed] == [
        (first.headers["webhook-id"], 2, 200)]


def test_failed_and_cancelled_tasks_are_delivered(hooks_stack, alice, receiver):
    client = Client(hooks_stack.web_url, alice.key)
    hook = register(client, receiver.url("/ends"))

    failed = client.wait_terminal(client.create(f"boom {sim(error=400)}")["id"])
    running = client.create(f"long {sim(tokens=400, interval_ms=20)}")
    wait_for(lambda: any(e["type"] == "chunk" for e in client.events(running["id"])["events"]), "a chunk")
    assert client.http.post(f"{API}/tasks/{running['id']}/cancel").status_code == 200

    received = arrivals(receiver, "/ends", 2)
    payloads = {p["data"]["id"]: p for p in (r.verified(hook["secret"]) for r in received)}
    assert failed["status"] == "failed"
    assert payloads[failed["id"]]["type"] == "task.failed"
    assert payloads[failed["id"]]["data"]["error"] == failed["error"]
    cancelled = payloads[running["id"]]
    assert cancelled["type"] == "task.cancelled" and cancelled["data"]["status"] == "cancelled"
    assert cancelled["data"]["result"]["content"].startswith(tokens(1))  # the partial answer is kept


def test_a_delivery_whose_message_was_lost_is_sent_by_the_sweep(hooks_stack, alice, receiver):
    client = Client(hooks_stack.web_url, alice.key)
    task = client.wait_terminal(client.create(f"hi {sim(tokens=3)}")["id"])
    hook = register(client, receiver.url("/swept"))  # after the task ended: nothing was sent

    # A row with no broker message: what a Redis restart between the two leaves.
    Delivery.objects.create(webhook=Webhook.objects.get(pk=hook["id"]), msg_id=f"msg_{uuid.uuid4().hex}",
                            event_type="task.completed", task_id=task["id"], next_attempt_at=timezone.now())

    [received] = arrivals(receiver, "/swept", 1)
    assert received.verified(hook["secret"])["data"]["id"] == task["id"]
