"""A start-up check of the Redis the service depends on: it must never evict a key.

Redis holds the broker's queue, every task's event log and the workers' heartbeats: a
policy that evicts under memory pressure silently drops accepted tasks' messages and logs.
With `noeviction` a full Redis refuses writes instead, which the service turns into 503s
and retries. Managed Redis services often forbid CONFIG: then nothing is said.
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings

logger = logging.getLogger(__name__)


def eviction_policy(url: str) -> str | None:
    """Redis's maxmemory-policy, or None when it cannot be read (CONFIG refused, no Redis)."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            reply = client.config_get("maxmemory-policy")
        finally:
            client.close()
    except redis.RedisError:
        return None
    value = reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy")  # type: ignore[call-overload]
    return value.decode() if isinstance(value, bytes) else value


def warn_if_redis_evicts() -> None:
    for url in dict.fromkeys((settings.REDIS_URL, settings.CELERY_BROKER_URL)):
        if not url.startswith(("redis://", "rediss://", "unix://")):
            continue
        policy = eviction_policy(url)
        if policy is not None and policy != "noeviction":
            logger.warning("Redis at %s has maxmemory-policy %s: under memory pressure it evicts keys, and "
                           "accepted tasks' messages and event logs with them. Set maxmemory-policy noeviction "
                           "(README, Reliability).", url.split("@")[-1], policy)
