"""Fixtures of the fault suite: a stack whose Redis (or database) the test may break."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.infra import PrivateRedis
from tests.stack import Stack, database_url


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    redis = PrivateRedis().start()
    try:
        yield redis
    finally:
        redis.close()


@pytest.fixture
def redis_stack(django_db_setup: None, private_redis: PrivateRedis) -> Iterator[Stack]:
    """daphne + a worker + the simulator on the test database and a Redis of the test's own."""
    from django.db import connection

    stack = Stack(database_url(connection.settings_dict), {"REDIS_URL": private_redis.url})
    try:
        yield stack.start()
    finally:
        stack.stop()
