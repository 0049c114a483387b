from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.db import OperationalError
from django.test import TransactionTestCase

from mageagent.tenancy.auth import Tenant

# Tests that are not end to end send their tasks to a queue no worker reads: a worker of an
# e2e stack (session-scoped, sharing the test database) would otherwise run them, racing the
# test's assertions and holding row locks while the test database is flushed.
PARKED_QUEUE = f"{os.environ.get('MAGEAGENT_QUEUE', 'mageagent')}-parked"


@pytest.fixture(autouse=True)
def _park_tasks_of_in_process_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("e2e") is None:
        settings = request.getfixturevalue("settings")
        settings.CELERY_TASK_DEFAULT_QUEUE = PARKED_QUEUE


@pytest.fixture(autouse=True, scope="session")
def _drop_parked_queue() -> Iterator[None]:
    yield
    from mageagent.celery import app

    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        client.delete(PARKED_QUEUE, *[f"{PARKED_QUEUE}:{p}" for p in range(10)])
        # The parked queue's fair queues (tasks/fair.py): its window is never freed.
        fair_keys = list(client.scan_iter(match=f"ma:fair:{PARKED_QUEUE}:*", count=1000))
        if fair_keys:
            client.delete(*fair_keys)


_flush = TransactionTestCase._fixture_teardown


def _flush_retrying_deadlocks(self: TransactionTestCase) -> None:
    # An e2e stack's worker may still be closing a finished test's task (an UPDATE holding a
    # row lock), or reconciling (its lease comes round every few seconds), when the tables are
    # truncated; PostgreSQL then aborts one side as a deadlock. The TRUNCATE rolled back as a
    # whole, so running it again is safe.
    for attempt in range(12):
        try:
            return _flush(self)
        except OperationalError as exc:
            if "deadlock" not in str(exc) or attempt == 11:
                raise
            time.sleep(min(0.2 * (attempt + 1), 1.0))


TransactionTestCase._fixture_teardown = _flush_retrying_deadlocks  # type: ignore[method-assign]


@dataclass(frozen=True)
class Persona:
    """A caller: the raw API key and the tenant it stands for."""

    name: str
    key: str
    tenant: Tenant

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_persona(name: str, company: str, app: str) -> Persona:
    from mageagent.tenancy.auth import tenant_for_key
    from mageagent.tenancy.services import api_key_create, app_get_or_create

    issued = api_key_create(app=app_get_or_create(company_slug=company, app_slug=app), name=name)
    tenant = tenant_for_key(issued.raw_key)
    assert tenant is not None
    return Persona(name=name, key=issued.raw_key, tenant=tenant)


@pytest.fixture
def alice(db: None) -> Persona:
    """Alice: acme's web app."""
    return make_persona("alice", "acme", "web")


@pytest.fixture
def bob(db: None) -> Persona:
    """Bob: acme too, but its mobile app."""
    return make_persona("bob", "acme", "mobile")


@pytest.fixture
def charlie(db: None) -> Persona:
    """Charlie: another company, globex, that must never see acme's data."""
    return make_persona("charlie", "globex", "web")


@pytest.fixture
def api() -> Iterator[object]:
    from rest_framework.test import APIClient

    yield APIClient()


@pytest.fixture(scope="session")
def stack(django_db_setup: None, django_db_blocker: object) -> Iterator[object]:
    """daphne + a Celery worker + the LLM simulator, as real processes on the test database."""
    from django.db import connection

    from tests.stack import Stack, database_url

    running = Stack(database_url(connection.settings_dict)).start()
    try:
        yield running
    finally:
        running.stop()
