"""Celery's Redis transport with one redis-py client per channel.

kombu's Redis channel builds a new `redis.Redis` client for every command it sends
outside its polling loop: each publish, ack, unacked-index update and event flush. A
client costs ~75 µs of CPU to build (redis-py fills its response-callback table per
client), several times per task in the worker (4% of its CPU at 40 tasks/s) and once per
`POST /tasks` in the web process. redis-py's clients are thread-safe (each command takes
a connection from the pool and returns it), so one client per channel and connection
pool serves every caller. Selected in settings for `redis://` broker URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

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
