"""Rows read on every task and changed rarely, cached per process behind a version in Redis.

Each process keeps what it read for up to a TTL and checks a counter in Redis on every read
(one GET). A process that changes the rows drops its own copy at once and, once the change is
committed, bumps the counter, so every other process (the workers) reads the rows again at its
next call. When Redis fails, the TTL alone bounds how stale a copy gets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import transaction

from .redis import sync_client

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class VersionedCache(Generic[K, V]):
    MAX_ENTRIES = 10_000

    def __init__(self, name: str, *, ttl_s: Callable[[], float]) -> None:
        self.name = name
        self.ttl_s = ttl_s  # read at call time, so that tests and operators can change it
        self._entries: dict[K, tuple[float, Any, V]] = {}

    def version_key(self) -> str:
        return f"{settings.MAGEAGENT_ROUTING['REDIS_NAMESPACE']}:{self.name}:version"

    def version(self) -> Any:
        try:
            return sync_client().get(self.version_key())
        except Exception:  # Redis trouble: the TTL alone bounds how stale the cache gets
            return None

    def get(self, key: K, load: Callable[[], V]) -> V:
        """The cached value for `key`, or `load()` when it is older than the TTL or the version moved."""
        ttl = float(self.ttl_s())
        version = self.version() if ttl > 0 else None
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now and hit[1] == version:
            return hit[2]
        value = load()
        if len(self._entries) > self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (now + ttl, version, value)
        return value

    def forget(self) -> None:
        """Drop this process's copies."""
        self._entries.clear()

    def changed(self, **_: Any) -> None:
        """The rows changed (call it, or connect it to the model's signals): this process
        forgets now, every process once the change is committed."""
        self.forget()
        transaction.on_commit(self._announce)

    def _announce(self) -> None:
        self.forget()
        try:
            sync_client().incr(self.version_key())
        except Exception:  # other processes then see the change within the TTL
            logger.exception("could not announce a change of the cached %s to other processes", self.name)
