"""Which worker processes are alive: each keeps a Redis key fresh while it runs."""

from __future__ import annotations

import os
import socket
import uuid

from django.conf import settings

from mageagent.redis import sync_client

WORKER_KEY = "ma:worker:"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def heartbeat_ttl() -> int:
    return max(int(settings.MAGEAGENT["WORKER_HEARTBEAT_S"] * 3), 2)


def live_workers() -> list[str]:
    client = sync_client()
    return [key.decode()[len(WORKER_KEY):] for key in client.scan_iter(match=f"{WORKER_KEY}*", count=500)]


def is_alive(worker_id: str) -> bool:
    return bool(worker_id) and bool(sync_client().exists(WORKER_KEY + worker_id))
