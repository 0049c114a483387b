"""The process's Redis clients and their Lua scripts: the event log, budgets, rate limits,
heartbeats and health checks all share them.

One sync client per process (web views, services, the Celery threads) and one async
client per event loop (the worker's loop, the SSE and WebSocket consumers): a redis-py
async client is bound to the loop it first ran on. A script is registered once per client
and source; redis-py then runs it by its SHA and loads it again after a Redis restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aredis
from django.conf import settings

_sync_client: redis.Redis | None = None
_sync_scripts: dict[str, Any] = {}
_async_clients: dict[asyncio.AbstractEventLoop, aredis.Redis] = {}
_async_scripts: dict[tuple[int, str], Any] = {}


def sync_client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, health_check_interval=30)
    return _sync_client


def sync_script(source: str) -> Any:
    """A Lua script registered on the sync client, once per source."""
    script = _sync_scripts.get(source)
    if script is None:
        script = _sync_scripts[source] = sync_client().register_script(source)
    return script


def async_client() -> aredis.Redis:
    """The running event loop's client."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aredis.Redis.from_url(settings.REDIS_URL, max_connections=200,
                                       health_check_interval=30)
        _async_clients[loop] = client
    return client


def async_script(source: str) -> Any:
    """A Lua script registered on the running loop's client, once per client and source."""
    client = async_client()
    script = _async_scripts.get((id(client), source))
    if script is None:
        script = _async_scripts[(id(client), source)] = client.register_script(source)
    return script


async def async_client_close() -> None:
    """Close and forget the running loop's client (a loop that ends before its process)."""
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
