from __future__ import annotations

import uuid

import pytest

from mageagent.celery import app as celery_app


@pytest.fixture
def private_queue(settings):
    """A broker queue of this test's own as the default queue: (name, its Redis client)."""
    name = f"test-queue-{uuid.uuid4().hex[:8]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = name
    with celery_app.connection_for_write() as conn:
        client = conn.default_channel.client
        yield name, client
        client.delete(name, *[f"{name}:{p}" for p in range(10)])
        fair_keys = list(client.scan_iter(match=f"ma:fair:{name}:*", count=1000))
        if fair_keys:
            client.delete(*fair_keys)
