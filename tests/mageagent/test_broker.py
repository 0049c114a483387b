"""The Celery broker transport: kombu's Redis transport reusing one client per channel."""

from __future__ import annotations

import uuid

from mageagent.broker import Channel
from mageagent.celery import app


def test_a_redis_broker_uses_one_client_for_every_command_of_a_channel():
    with app.connection() as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            pass

    assert isinstance(channel, Channel)
    assert first is second


def test_messages_published_and_acked_through_the_shared_client_leave_nothing_behind():
    queue = f"broker-test-{uuid.uuid4().hex[:8]}"
    with app.connection() as conn:
        simple = conn.SimpleQueue(queue)
        channel = simple.channel
        with channel.conn_or_acquire() as client:
            unacked_before = client.hlen(channel.unacked_key)
        try:
            for i in range(3):
                simple.put({"n": i})
            got = []
            for _ in range(3):
                message = simple.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
            with channel.conn_or_acquire() as client:
                unacked = client.hlen(channel.unacked_key)
        finally:
            simple.clear()
            simple.close()

    assert got == [0, 1, 2]
    assert unacked == unacked_before


def test_a_new_connection_pool_gets_a_new_client():
    with app.connection() as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as before:
            pass
        channel._disconnect_pools()
        with channel.conn_or_acquire() as after:
            assert after.ping()

    assert after is not before
