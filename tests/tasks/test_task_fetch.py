"""The compiled task SELECT (mageagent/queries.py) returns what the ORM returns, keeps
tenants apart, and refuses a statement whose parameters it would bind in the wrong order."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from mageagent.errors import NotFound
from mageagent.queries import CompiledSelect
from mageagent.tenancy.auth import Tenant
from tasks import selectors, services
from tasks.models import Task

pytestmark = pytest.mark.django_db
STAFF = Tenant(company_id=None, company_slug="*", app_id=None, app_slug="*", is_staff=True)


def finished(persona) -> Task:
    task, _ = services.task_create(tenant=persona.tenant, prompt="Summarise the ledger",
                                   context={"additionalContext": "Q3"}, tools=["web_search"],
                                   metadata={"ticket": 7})
    assert services.task_start(task=task, worker="w1", steps=["llm_execution"],
                               routing={"model": "openai/gpt-4o-mini", "candidates": ["a", "b"]})
    assert services.task_complete(task_id=str(task.id), attempt=1, result={"content": "done", "usage": None},
                                  steps=["llm_execution"], routing={"model": "openai/gpt-4o-mini"})
    return task


def fields(task: Task) -> dict[str, object]:
    return {f.attname: getattr(task, f.attname) for f in Task._meta.concrete_fields}


def test_a_fetched_task_has_every_field_the_orm_gives_it(alice):
    task = finished(alice)
    fetched = selectors.task_fetch(task.id)
    assert fetched is not None
    assert fields(fetched) == fields(Task.objects.get(pk=task.pk))
    assert fetched.result == {"content": "done", "usage": None}  # JSON decoded, not text
    assert fetched._state.adding is False and fetched._state.db == "default"


def test_a_task_fetched_with_its_relations_renders_its_company_and_app_without_a_query(alice,
                                                                                       django_assert_num_queries):
    task = finished(alice)
    with django_assert_num_queries(1):
        fetched = selectors.task_get(tenant=alice.tenant, task_id=str(task.id))
        assert (fetched.company.slug, fetched.app.slug) == ("acme", "web")


def test_another_companys_task_does_not_exist_for_charlie_but_does_for_staff(alice, charlie):
    task = finished(alice)
    with pytest.raises(NotFound):
        selectors.task_get(tenant=charlie.tenant, task_id=str(task.id))
    assert selectors.task_fetch(task.id, company_id=charlie.tenant.company_id) is None
    assert selectors.task_get(tenant=STAFF, task_id=str(task.id)).id == task.id


def test_bob_of_the_same_company_sees_alices_task(alice, bob):
    task = finished(alice)
    assert selectors.task_get(tenant=bob.tenant, task_id=str(task.id)).id == task.id


@pytest.mark.parametrize("task_id", ["not-a-uuid", "", str(uuid.uuid4()), 12])
def test_a_malformed_or_unknown_id_is_not_found(alice, task_id):
    with pytest.raises(NotFound):
        selectors.task_get(tenant=alice.tenant, task_id=task_id)


def test_a_statement_whose_parameters_come_in_another_order_is_refused(alice):
    qs = Task.objects.order_by().filter(company_id=1).filter(pk=uuid.UUID(int=0))
    pk = Task._meta.pk.get_db_prep_value(uuid.UUID(int=0), connection)
    assert CompiledSelect(qs, [1, pk]).all([alice.tenant.company_id, pk]) == []
    with pytest.raises(RuntimeError, match="expected order"):
        CompiledSelect(qs, [pk, 1])
