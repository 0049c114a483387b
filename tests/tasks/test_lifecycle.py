"""Guarded transitions and idempotency-key expiry, in-process against the real database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from mageagent.errors import Conflict
from tasks import services
from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db
TASKS = "/mageagent/api/v1/tasks"


def post(api, persona, body, **headers):
    return api.post(TASKS, body, format="json", HTTP_AUTHORIZATION=f"Bearer {persona.key}", **headers)


def started(persona) -> Task:
    # Inside the test transaction on_commit never fires: nothing reaches the broker.
    task, _ = services.task_create(tenant=persona.tenant, prompt="Explain quantum computing")
    assert services.task_start(task=task, worker="w1", routing={"model": "gpt-4o-mini"}, steps=[]) is not None
    return task


def ended(persona, status: str) -> Task:
    task = started(persona)
    task_id = str(task.id)
    if status == TaskStatus.COMPLETED:
        assert services.task_complete(task_id=task_id, attempt=1, result={"content": "done"}, steps=[], routing=None)
    elif status == TaskStatus.FAILED:
        assert services.task_fail(task_id=task_id, attempt=1, error={"code": "invalid_request", "message": "x"})
    else:
        # Cancelled while processing: the race a worker finishing late runs into.
        services.task_cancel(task=Task.objects.get(pk=task.pk))
    task = Task.objects.get(pk=task.pk)
    assert task.status == status
    return task


def row(task: Task) -> dict[str, Any]:
    return Task.objects.filter(pk=task.pk).values().get()


@pytest.fixture
def no_cancel_wait(settings) -> None:
    # No worker is listening: close a processing task's log from here at once.
    settings.MAGEAGENT = {**settings.MAGEAGENT, "CANCEL_WAIT_S": 0.0}


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.FAILED])
def test_a_finished_task_refuses_every_later_transition_and_stays_as_it_was(alice, no_cancel_wait, status):
    task = ended(alice, status)
    before = row(task)
    task_id = str(task.id)

    changes = [
        services.task_complete(task_id=task_id, attempt=1, result={"content": "late"}, steps=["late"], routing=None),
        services.task_fail(task_id=task_id, attempt=1, error={"code": "provider_error", "message": "late"}),
        services.task_fail(task_id=task_id, attempt=None, error={"code": "timeout", "message": "late"}),
        services.task_requeue(task_id=task_id, attempt=1, steps=["late"]),
        services.task_start(task=Task.objects.get(pk=task.pk), worker="w2", routing=None, steps=["late"]),
    ]

    assert changes == [False, False, False, False, None]
    assert row(task) == before


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.FAILED])
def test_cancelling_a_task_that_already_ended_is_a_conflict_and_changes_nothing(alice, api, status):
    task = ended(alice, status)
    before = row(task)

    with pytest.raises(Conflict) as raised:
        services.task_cancel(task=task)
    response = api.post(f"{TASKS}/{task.id}/cancel", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert raised.value.status == 409
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
    assert row(task) == before


@pytest.fixture
def one_minute_keys(settings) -> timedelta:
    settings.MAGEAGENT = {**settings.MAGEAGENT, "IDEMPOTENCY_TTL_S": 60}
    return timedelta(seconds=60)


def backdate(task_id: str, age: timedelta) -> None:
    Task.objects.filter(pk=task_id).update(created_at=timezone.now() - age)


def test_an_idempotency_key_older_than_its_ttl_may_be_used_for_a_new_task(api, alice, one_minute_keys):
    first = post(api, alice, {"prompt": "last week's question"}, HTTP_IDEMPOTENCY_KEY="k-expiring")
    backdate(first.json()["id"], one_minute_keys + timedelta(seconds=30))

    again = post(api, alice, {"prompt": "today's question"}, HTTP_IDEMPOTENCY_KEY="k-expiring")
    replay = post(api, alice, {"prompt": "today's question"}, HTTP_IDEMPOTENCY_KEY="k-expiring")

    assert first.status_code == 202 and again.status_code == 202, again.content
    assert again.json()["id"] != first.json()["id"]
    assert again.json()["prompt"] == "today's question"
    # The key now belongs to the new task.
    assert replay.status_code == 200 and replay.json()["id"] == again.json()["id"]
    assert Task.objects.get(pk=first.json()["id"]).prompt == "last week's question"
    assert Task.objects.count() == 2


def test_an_idempotency_key_within_its_ttl_still_guards_its_task(api, alice, one_minute_keys):
    first = post(api, alice, {"prompt": "recent question"}, HTTP_IDEMPOTENCY_KEY="k-recent")
    backdate(first.json()["id"], one_minute_keys - timedelta(seconds=30))

    replay = post(api, alice, {"prompt": "recent question"}, HTTP_IDEMPOTENCY_KEY="k-recent")
    other = post(api, alice, {"prompt": "another question"}, HTTP_IDEMPOTENCY_KEY="k-recent")

    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
    assert Task.objects.count() == 1
