"""Fixtures of the fault suite: a stack (daphne, Celery worker, simulator) whose Redis the
tests may kill and restart, on the shared test database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.faults import PrivateRedis
from tests.faults.checks import RECOVERY_S
from tests.stack import Stack, database_url

# A provider that stalls is given up after this (MAGEAGENT_LLM_TIMEOUT_S): short, so that
# the stalling scenario ends in seconds.
LLM_TIMEOUT_S = "3"


@pytest.fixture(autouse=True)
def _live_database_connections() -> None:
    """A fault test may have cut this process's own database connections (connection
    storms terminate every backend of the test database): drop the dead ones first, so
    that the next test's set-up does not draw one from the pool."""
    from django.db import connection

    connection.close()
    if getattr(connection, "pool", None) is not None:
        connection.pool.check()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    """Production's Redis configuration (AOF every second, noeviction), on a port of its own."""
    redis = PrivateRedis(persist=True).start()
    try:
        yield redis
    finally:
        redis.close()


@pytest.fixture(scope="module")
def fault_stack(django_db_setup: None, django_db_blocker: object, private_redis: PrivateRedis) -> Iterator[Stack]:
    from django.db import connection

    env = {"REDIS_URL": private_redis.url, "MAGEAGENT_LLM_TIMEOUT_S": LLM_TIMEOUT_S}
    stack = Stack(database_url(connection.settings_dict), env)
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture
def workers_running(fault_stack: Stack) -> Iterator[Stack]:
    """The fault stack with its one worker up at the start and end of every test."""
    yield fault_stack
    if "worker" not in fault_stack.processes or fault_stack.processes["worker"].proc.poll() is not None:
        fault_stack.processes.pop("worker", None)
        fault_stack.start_worker("worker")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RECOVERY_S:
        terminalreporter.section("fault recovery (s from the fault's end to every task ended)")
        for scenario, seconds in RECOVERY_S.items():
            terminalreporter.write_line(f"{scenario:<48} {seconds:6.1f}")
