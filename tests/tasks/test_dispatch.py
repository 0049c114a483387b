"""Handing tasks to the broker: Celery's own send_task, by the task's name."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from mageagent.celery import app as celery_app
from tasks import events, services
from tasks.tasks import task_execute_job


def message_on(client, key):
    raw = client.rpop(key)
    assert raw is not None, f"nothing on {key}"
    message = json.loads(raw)
    body = json.loads(base64.b64decode(message["body"]))
    return message, body


def test_a_dispatched_task_is_a_celery_message_for_the_executor_at_its_priority(private_queue):
    name, client = private_queue
    task_id = str(uuid.uuid4())

    services.task_send(task_id=task_id, priority=9)  # the API's highest: the transport's 0
    services.task_send(task_id="other", priority=2)

    message, body = message_on(client, name)
    assert message["headers"]["task"] == "mageagent.task.execute"
    assert body[0] == [task_id] and body[1] == {}
    assert message["properties"]["priority"] == 0
    assert message["headers"]["id"] != task_id  # a Celery message id of its own
    _, other = message_on(client, f"{name}:7")
    assert other[0] == ["other"]


def test_a_countdown_is_the_messages_eta(private_queue):
    name, client = private_queue
    services.task_send(task_id="later", priority=0, countdown=30)

    message, _ = message_on(client, f"{name}:9")
    assert message["headers"]["eta"]


def test_the_name_dispatched_is_the_celery_task_that_runs_an_attempt():
    assert task_execute_job.name == services.TASK_EXECUTE_JOB
    assert celery_app.tasks[services.TASK_EXECUTE_JOB].name == services.TASK_EXECUTE_JOB


# --- a new task: its queued event, then its message ---------------------------------------
def new_task(persona, priority=0):
    # In the test's transaction on_commit never fires: _enqueue is called by the test.
    task, _ = services.task_create(tenant=persona.tenant, prompt="Plan the sprint", priority=priority)
    return task


def log_of(task):
    return [events.peek(raw) for raw in events.read_after(str(task.id), 0) or []]


@pytest.mark.django_db
def test_a_new_task_logs_queued_before_its_message_reaches_the_broker(alice, private_queue, monkeypatch):
    name, client = private_queue
    task = new_task(alice, priority=9)
    seen_at_send = []
    real = celery_app.send_task

    def send_task(*args, **kwargs):
        seen_at_send.append(log_of(task))
        return real(*args, **kwargs)

    monkeypatch.setattr(celery_app, "send_task", send_task)
    services._enqueue(task)

    message, body = message_on(client, name)  # priority 9: the transport's 0, the list itself
    assert message["headers"]["task"] == "mageagent.task.execute" and body[0] == [str(task.id)]
    assert message["properties"]["delivery_info"]["routing_key"] == name
    assert seen_at_send == [[(1, "status")]]


@pytest.mark.django_db
def test_when_the_log_cannot_be_written_the_task_still_reaches_the_broker(alice, private_queue, monkeypatch):
    name, client = private_queue

    def refuse(*args, **kwargs):
        raise ConnectionError("redis went away")

    monkeypatch.setattr(events, "append", refuse)
    task = new_task(alice)

    services._enqueue(task)

    assert message_on(client, f"{name}:9")[1][0] == [str(task.id)]
    assert client.llen(f"{name}:9") == 0  # once


@pytest.mark.django_db
def test_when_the_broker_refuses_the_task_stays_queued_for_the_reconciler(alice, private_queue, monkeypatch):
    name, client = private_queue
    task = new_task(alice)

    def refuse(*args, **kwargs):
        raise ConnectionError("broker went away")

    monkeypatch.setattr(celery_app, "send_task", refuse)
    services._enqueue(task)  # logged, not raised: the row is the ledger

    assert client.llen(f"{name}:9") == 0
    assert log_of(task) == [(1, "status")]
