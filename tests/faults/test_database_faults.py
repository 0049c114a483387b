"""Every task answered 202 ends once while the database's connections are terminated
under it (pg_terminate_backend on the test's own database only)."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from devtools.faults import terminate_backends
from tests.clients import Client, sim, tokens, wait_for
from tests.faults.checks import assert_ended_once, record_recovery
from tests.faults.test_worker_and_redis_faults import post_during
from tests.stack import database_url

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


@pytest.fixture
def postgres() -> str:
    if connection.vendor != "postgresql":
        pytest.skip("terminating connections needs PostgreSQL")
    return database_url(connection.settings_dict)


def test_tasks_end_once_while_database_connections_are_terminated(workers_running, postgres, alice):
    client = Client(workers_running.web_url, alice.key)
    ids = [client.create(f"pg storm {i} {sim(tokens=60, interval_ms=50)}")["id"] for i in range(4)]
    wait_for(lambda: all(client.get(i)["status"] == "processing" for i in ids), "the tasks to stream")
    name = connection.settings_dict["NAME"]
    connection.close()

    # Every connection of the service to its database is cut, again and again, for 5 s,
    # while the tasks stream and new ones are submitted.
    storm_ends = time.monotonic() + 5
    accepted: list[str] = []
    statuses: list[int] = []
    killed = 0
    try:
        while time.monotonic() < storm_ends:
            killed += terminate_backends(postgres, name)
            more, answered = post_during(client, "submitted in the storm", 0.3)
            accepted += more
            statuses += answered
    finally:
        # This process's own pooled connections were cut too: drop them.
        connection.close()
        if getattr(connection, "pool", None) is not None:
            connection.pool.check()
    assert 500 not in statuses
    record_recovery("database connections terminated (5 s)", client, ids + accepted, time.monotonic())

    assert killed > 0
    for task_id in ids:
        assert assert_ended_once(client, task_id, tokens(60))["status"] == "completed"
    for task_id in accepted:
        assert assert_ended_once(client, task_id, tokens(20))["status"] == "completed"
