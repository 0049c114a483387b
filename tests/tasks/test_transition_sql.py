"""The hand-written transition UPDATE (tasks/services.py `_transition`) is the statement the
ORM sends for the same update: a Django that quotes, orders or prepares values differently
fails here before it writes a row the ORM would not have written."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tasks import services
from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def sent(run) -> str:
    with CaptureQueriesContext(connection) as queries:
        run()
    (query,) = queries.captured_queries
    return query["sql"]


def conditions(sql: str) -> list[str]:
    where = sql.split(" WHERE ", 1)[1].replace('"tasks_task".', "")
    return sorted(re.sub(r"^\((.*)\)$", r"\1", where).split(" AND "))


def test_a_transition_sends_what_queryset_update_sends(alice):
    task, _ = services.task_create(tenant=alice.tenant, prompt="Explain quantum computing")
    values = {"status": TaskStatus.PROCESSING, "steps": ["a", "é"], "routing": {"model": "m", "n": 1},
              "worker": "w1", "started_at": NOW}
    with mock.patch("tasks.services.timezone.now", return_value=NOW):
        ours = sent(lambda: services._transition(str(task.id), from_=(TaskStatus.QUEUED,),
                                                 extra={"attempts": 1}, **values))
    orm = sent(lambda: Task.objects.filter(pk=task.id, status__in=(TaskStatus.QUEUED,), attempts=1).update(
        **values, updated_at=NOW))

    # The same SET, values rendered alike; the same WHERE conditions (the ORM qualifies
    # the columns, wraps them in parentheses and orders them by name).
    assert ours.split(" WHERE ")[0] == orm.split(" WHERE ")[0]
    assert conditions(ours) == conditions(orm)


def test_a_transition_changes_the_row_once(alice):
    task, _ = services.task_create(tenant=alice.tenant, prompt="Explain quantum computing")

    first = services._transition(str(task.id), from_=(TaskStatus.QUEUED,), status=TaskStatus.CANCELLED)
    again = services._transition(str(task.id), from_=(TaskStatus.QUEUED,), status=TaskStatus.CANCELLED)

    assert (first, again) == (True, False)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.CANCELLED
