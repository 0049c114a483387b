"""Each transition writes its own events: the caller changes the state, the service logs it."""

from __future__ import annotations

import threading

import orjson
import pytest
import redis

from tasks import events, services
from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db
OWNER = "1-worker-a"


def running(persona) -> Task:
    task, _ = services.task_create(tenant=persona.tenant, prompt="Explain quantum computing")
    started = services.task_start(task=task, worker="w1", routing={"model": "gpt-4o-mini"}, steps=[])
    assert started is not None
    events.claim(str(task.id), OWNER)
    return started


def log(task: Task) -> list[dict]:
    return [orjson.loads(raw) for raw in events.read_after(str(task.id), 0) or []]


def test_completing_a_task_closes_its_log_with_the_result(alice):
    task = running(alice)

    assert services.task_complete(task_id=str(task.id), attempt=1, result={"content": "hi"}, steps=[], routing=None,
                                  owner=OWNER)

    last = log(task)[-1]
    assert (last["type"], last["status"], last["result"]) == ("done", "completed", {"content": "hi"})
    assert events.is_closed(str(task.id))


def test_failing_a_task_closes_its_log_with_the_error(alice):
    task = running(alice)
    error = {"code": "provider_error", "message": "down"}

    assert services.task_fail(task_id=str(task.id), attempt=1, error=error, owner=OWNER)

    last = log(task)[-1]
    assert (last["type"], last["status"], last["error"]) == ("done", "failed", error)
    assert events.is_closed(str(task.id))


def test_a_requeued_task_logs_its_next_attempt_and_the_error_and_stays_open(alice):
    task = running(alice)
    error = {"code": "rate_limited", "message": "slow down"}

    assert services.task_requeue(task_id=str(task.id), attempt=1, steps=[], error=error, owner=OWNER)

    last = log(task)[-1]
    assert (last["type"], last["status"], last["attempt"], last["error"]) == ("status", "queued", 2, error)
    assert not events.is_closed(str(task.id))


def test_a_transition_another_actor_won_writes_no_event(alice):
    task = running(alice)
    assert services.task_fail(task_id=str(task.id), attempt=1, error={"code": "timeout"}, owner=OWNER)
    before = log(task)

    assert not services.task_complete(task_id=str(task.id), attempt=1, result={"content": "late"}, steps=[],
                                      routing=None, owner=OWNER)
    assert log(task) == before


def test_a_fenced_attempt_changes_no_log_after_another_one_claimed_it(alice):
    task = running(alice)
    events.claim(str(task.id), "reconciler")  # the old attempt is fenced from here on
    before = log(task)

    assert services.task_complete(task_id=str(task.id), attempt=1, result={"content": "zombie"}, steps=[],
                                  routing=None, owner=OWNER)
    assert log(task) == before
    assert not events.is_closed(str(task.id))


def test_a_cancelled_attempt_closes_its_log_and_keeps_its_partial_answer(alice):
    task = running(alice)
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.CANCELLED)

    assert services.task_close_cancelled(task_id=str(task.id), owner=OWNER, result={"content": "Hel"})
    assert not services.task_close_cancelled(task_id=str(task.id), owner=OWNER, result={"content": "again"})

    task.refresh_from_db()
    assert task.result == {"content": "Hel"}
    assert log(task)[-1]["status"] == "cancelled"


def test_waiting_for_a_log_wakes_when_another_thread_closes_it(alice):
    task = running(alice)
    task_id = str(task.id)
    closer = threading.Thread(target=lambda: events.append(
        task_id, events.encode("chunk", content="a"), services.done_event(status="cancelled"), close=True))
    assert not events.wait_closed(task_id, 0.05)  # nobody closes it: the wait ends, not closed

    closer.start()
    assert events.wait_closed(task_id, 30)
    closer.join()
    assert events.is_closed(task_id)


def test_waiting_for_a_closed_log_returns_at_once(alice):
    task = running(alice)
    services.task_fail(task_id=str(task.id), attempt=1, error={"code": "timeout"}, owner=OWNER)

    assert events.wait_closed(str(task.id), 30)


def test_a_won_transition_stands_when_its_events_cannot_be_logged(alice, monkeypatch):
    task = running(alice)

    def redis_down(*args, **kwargs):
        raise redis.exceptions.ConnectionError("redis went away")

    monkeypatch.setattr(events, "append", redis_down)

    assert services.task_complete(task_id=str(task.id), attempt=1, result={"content": "hi"}, steps=[], routing=None,
                                  owner=OWNER)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.COMPLETED
