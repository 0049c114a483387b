"""Handing tasks to the broker: Celery's message through the process's held producer."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from mageagent.celery import app as celery_app
from tasks import services


def message_on(client, key):
    raw = client.rpop(key)
    assert raw is not None, f"nothing on {key}"
    message = json.loads(raw)
    body = json.loads(base64.b64decode(message["body"]))
    return message, body


def test_a_dispatched_task_is_a_celery_message_for_the_executor_at_its_priority(private_queue):
    name, client = private_queue
    task_id = str(uuid.uuid4())

    services.task_dispatch(task_id=task_id, priority=9)  # the API's highest: the transport's 0
    services.task_dispatch(task_id="other", priority=2)

    message, body = message_on(client, name)
    assert message["headers"]["task"] == "mageagent.task.execute"
    assert body[0] == [task_id] and body[1] == {}
    assert message["properties"]["priority"] == 0
    assert message["headers"]["id"] != task_id  # a Celery message id of its own
    _, other = message_on(client, f"{name}:7")
    assert other[0] == ["other"]


def test_a_countdown_is_the_messages_eta(private_queue):
    name, client = private_queue
    services.task_dispatch(task_id="later", priority=0, countdown=30)

    message, _ = message_on(client, f"{name}:9")
    assert message["headers"]["eta"]


def test_a_failed_publish_raises_and_the_next_one_gets_a_new_producer(private_queue, monkeypatch):
    name, client = private_queue
    services.task_dispatch(task_id="first")
    held = services._publisher.producer
    real = celery_app.amqp.send_task_message
    calls = []

    def refuse_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("broker went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(type(celery_app.amqp), "send_task_message", property(lambda self: refuse_once))
    with pytest.raises(ConnectionError):
        services.task_dispatch(task_id="lost")
    services.task_dispatch(task_id="second")

    assert services._publisher.producer is not held
    assert [message_on(client, f"{name}:9")[1][0] for _ in range(2)] == [["first"], ["second"]]


# --- a new task: its queued event and its message in one script -----------------------------
def new_task(persona, priority=0):
    # In the test's transaction on_commit never fires: _enqueue is called by the test.
    task, _ = services.task_create(tenant=persona.tenant, prompt="Plan the sprint", priority=priority)
    return task


def log_of(task):
    from tasks import events

    return [events.peek(raw) for raw in events.read_after(str(task.id), 0) or []]


@pytest.mark.django_db
def test_a_new_tasks_message_is_pushed_by_its_queued_events_script_not_by_kombu(alice, private_queue, monkeypatch):
    from kombu.transport import redis as kombu_redis

    name, client = private_queue
    task = new_task(alice, priority=9)

    def kombu_put(*args, **kwargs):
        raise AssertionError("kombu sent the message itself")

    monkeypatch.setattr(kombu_redis.Channel, "_put", kombu_put)
    services._enqueue(task)

    message, body = message_on(client, name)  # priority 9: the transport's 0, the list itself
    assert message["headers"]["task"] == "mageagent.task.execute" and body[0] == [str(task.id)]
    assert message["properties"]["delivery_info"]["routing_key"] == name
    assert log_of(task) == [(1, "status")]


@pytest.mark.django_db
def test_a_broker_on_another_redis_gets_the_message_from_kombu(alice, private_queue, settings, monkeypatch):
    from tasks import events

    name, client = private_queue
    settings.CELERY_BROKER_URL = settings.REDIS_URL + "?another=1"
    pushes = []
    real = events.append
    monkeypatch.setattr(events, "append", lambda *a, **kw: pushes.append(kw.get("push")) or real(*a, **kw))
    task = new_task(alice, priority=2)

    services._enqueue(task)

    assert pushes == [None]
    assert message_on(client, f"{name}:7")[1][0] == [str(task.id)]
    assert log_of(task) == [(1, "status")]


@pytest.mark.django_db
def test_when_the_events_script_fails_kombu_still_hands_the_task_to_the_broker(alice, private_queue, monkeypatch):
    from tasks import events

    name, client = private_queue
    calls = []

    def refuse(*args, **kwargs):
        calls.append(kwargs.get("push"))
        raise ConnectionError("redis went away")

    monkeypatch.setattr(events, "append", refuse)
    task = new_task(alice)

    services._enqueue(task)

    assert calls and calls[0] is not None  # the script was asked to push it
    assert message_on(client, f"{name}:9")[1][0] == [str(task.id)]
    assert client.llen(f"{name}:9") == 0  # once


def test_a_captured_publish_is_built_but_not_sent(private_queue):
    from mageagent import broker

    name, client = private_queue
    key, payload = broker.captured(lambda: services.task_dispatch(task_id="kept", priority=0))

    assert key == f"{name}:9" and client.llen(key) == 0
    assert json.loads(base64.b64decode(json.loads(payload)["body"]))[0] == ["kept"]
    with pytest.raises(RuntimeError, match="one message"):
        broker.captured(lambda: None)
