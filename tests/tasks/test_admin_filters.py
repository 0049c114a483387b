"""The admin task list's company, app and model filters, as staff click them."""

from __future__ import annotations

import pytest

from tasks import services
from tasks.models import Task

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/tasks/task/"


def make_task(persona, prompt: str, model: str | None = None) -> Task:
    # Inside the test transaction on_commit never fires: nothing reaches the broker.
    task, _ = services.task_create(tenant=persona.tenant, prompt=prompt, model=model)
    return task


def listed(response) -> set[str]:
    assert response.status_code == 200
    return {str(task.pk) for task in response.context["cl"].result_list}


def follow_filter(admin_client, title: str, display: str) -> set[str]:
    """Open the list, then click the filter choice `display` under `title`."""
    page = admin_client.get(CHANGELIST)
    [spec] = [s for s in page.context["cl"].filter_specs if s.title == title]
    [choice] = [c for c in spec.choices(page.context["cl"]) if str(c["display"]) == display]
    return listed(admin_client.get(CHANGELIST + choice["query_string"]))


@pytest.fixture
def tasks(alice, bob, charlie) -> dict[str, str]:
    made = {
        "alice-mini": make_task(alice, "a", "gpt-4o-mini"),
        "alice-default": make_task(alice, "b"),
        "bob-4.1": make_task(bob, "c", "gpt-4.1"),
        "charlie-mini": make_task(charlie, "d", "gpt-4o-mini"),
    }
    return {name: str(task.pk) for name, task in made.items()}


def test_the_unfiltered_list_shows_every_companys_tasks(admin_client, tasks):
    assert listed(admin_client.get(CHANGELIST)) == set(tasks.values())


def test_filtering_by_company_shows_only_that_companys_tasks(admin_client, tasks):
    assert follow_filter(admin_client, "company", "acme") == {
        tasks["alice-mini"], tasks["alice-default"], tasks["bob-4.1"]}
    assert follow_filter(admin_client, "company", "globex") == {tasks["charlie-mini"]}


def test_filtering_by_app_tells_apps_of_one_company_apart(admin_client, tasks):
    assert follow_filter(admin_client, "app", "acme/web") == {tasks["alice-mini"], tasks["alice-default"]}
    assert follow_filter(admin_client, "app", "acme/mobile") == {tasks["bob-4.1"]}
    assert follow_filter(admin_client, "app", "globex/web") == {tasks["charlie-mini"]}


def test_filtering_by_model_shows_only_tasks_that_asked_for_it(admin_client, tasks):
    assert follow_filter(admin_client, "model", "gpt-4o-mini") == {tasks["alice-mini"], tasks["charlie-mini"]}
    assert follow_filter(admin_client, "model", "gpt-4.1") == {tasks["bob-4.1"]}


def test_filters_combine(admin_client, tasks, alice):
    page = admin_client.get(CHANGELIST, {"company__id__exact": alice.tenant.company_id, "model": "gpt-4o-mini"})
    assert listed(page) == {tasks["alice-mini"]}
