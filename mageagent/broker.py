"""Overrides kombu's Channel.conn_or_acquire and _connparams (kombu ==5.7.0; tests/mageagent/test_broker.py).

Celery's Redis transport with one redis-py client per channel.

kombu's Redis channel builds a new `redis.Redis` client for every command it sends
outside its polling loop: each publish, ack, unacked-index update and event flush. A
client costs ~75 µs of CPU to build (redis-py fills its response-callback table per
client), several times per task in the worker (4% of its CPU at 40 tasks/s) and once per
`POST /tasks` in the web process. redis-py's clients are thread-safe (each command takes
a connection from the pool and returns it), so one client per channel and connection
pool serves every caller. Selected in settings for `redis://` broker URLs.

A channel whose transport kombu has detached raises a connection error, not an
AttributeError: when Redis goes away, Celery's consumer first `collect()`s its connection
(closing the default channel fails on its pending BRPOP read, so the channel stays half
open, and the transport's `client` is then set to None) and then `close()`s it, which
closes that channel again; its `restore_unacked` builds a Redis pool from the detached
transport and dies in `_connparams` with `'NoneType' object has no attribute 'hostname'`.
That is not one of the connection errors Celery ignores there, so the worker exited
(`Unrecoverable error`) on a Redis restart, with kombu's stock transport as with this one;
acks of tasks that finish after the reconnect take the same path. kombu's tracker has the
same `_connparams` failure after a connection was released (celery/kombu#970, and the
older celery/kombu#582); kombu 5.7.0, the latest, still has it. As a connection error it is
what it means: the broker connection is gone; Celery reconnects, and an unacknowledged
message is delivered again (the Task row decides whether it still has to run).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from django.conf import settings
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from .redis import sync_client


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:  # detached by Connection.collect(): see the module's docstring
            raise RedisConnectionError("the broker connection was closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        return params

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        pool = self.pool  # a new pool after a reconnect: a new client for it
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel


_queue_client: Any = None


def queue_length() -> int:
    """Messages waiting in the task queue: its priority lists' lengths, in one round trip.
    Messages a worker holds (prefetched, or waiting for a retry's countdown) are not counted."""
    global _queue_client
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://")):
        return 0
    if _queue_client is None:
        _queue_client = sync_client() if url == settings.REDIS_URL else redis.Redis.from_url(url)
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    queue, sep = settings.CELERY_TASK_DEFAULT_QUEUE, options.get("sep", ":")
    pipe = _queue_client.pipeline(transaction=False)
    for step in options.get("priority_steps", [0]):
        pipe.llen(f"{queue}{sep}{step}" if step else queue)
    return sum(int(n) for n in pipe.execute())
