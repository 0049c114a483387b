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
