"""Which worker processes are alive, and which tasks each one holds: every process keeps a
Redis key fresh while it runs, holding the ids of the tasks it is running. A task whose
worker is alive but no longer lists it was dropped by that worker (an attempt whose Redis
or database calls failed and could not be handed back): the reconciler runs it again."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections import Counter

from django.conf import settings

from mageagent.redis import sync_client

WORKER_KEY = "ma:worker:"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class HeldTasks:
    """The tasks this process runs, from just before their start transition until their
    attempt ended (its final transition made, or given up).

    Counted per task: a duplicate message (the reconciler re-sends a queued row after an
    outage while the hand-back sends it too) enters the executor beside the running attempt
    and leaves at once when its start transition finds the task taken; a set would then drop
    the running attempt from the heartbeat, and the reconciler ran it again as dropped."""

    def __init__(self) -> None:
        self._ids: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, task_id: str) -> None:
        with self._lock:
            self._ids[task_id] += 1

    def discard(self, task_id: str) -> None:
        with self._lock:
            self._ids[task_id] -= 1
            if self._ids[task_id] <= 0:
                del self._ids[task_id]

    def snapshot(self) -> str:
        with self._lock:
            return ",".join(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


held = HeldTasks()


def heartbeat_ttl() -> int:
    return max(int(settings.MAGEAGENT["WORKER_HEARTBEAT_S"] * 3), 2)


def live_workers() -> list[str]:
    client = sync_client()
    return [key.decode()[len(WORKER_KEY):] for key in client.scan_iter(match=f"{WORKER_KEY}*", count=500)]


def is_alive(worker_id: str) -> bool:
    return bool(worker_id) and bool(sync_client().exists(WORKER_KEY + worker_id))


def held_by(worker_ids: set[str]) -> dict[str, frozenset[str] | None]:
    """Each worker's tasks as its last heartbeat listed them; None for a dead worker."""
    ids = sorted(w for w in worker_ids if w)
    values = sync_client().mget([WORKER_KEY + w for w in ids]) if ids else []
    found: dict[str, frozenset[str] | None] = {w: None for w in worker_ids}
    for worker, value in zip(ids, values, strict=True):
        if value is not None:
            text = value.decode() if isinstance(value, bytes) else str(value)
            found[worker] = frozenset(text.split(","))
    return found
