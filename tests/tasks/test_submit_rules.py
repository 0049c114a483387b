"""The rules of submitting and cancelling hold whatever the entry point: REST, the per-task
WebSocket, the multiplexed WebSocket and the admin reach the same services."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from channels.testing import WebsocketCommunicator

from mageagent.asgi import application
from mageagent.errors import BudgetExceeded, ValidationFailed
from routing.budgets import budget_context, budget_usage
from routing.models import Budget, Model
from tasks import services
from tasks.models import Task, TaskStatus
from tests.conftest import make_persona

TASKS = "/mageagent/api/v1/tasks"
CHANGELIST = "/admin/tasks/task/"


def held(persona) -> float:
    ctx = budget_context(company_id=persona.tenant.company_id, app_id=persona.tenant.app_id)
    return next(u["reserved_usd"] for u in budget_usage(ctx) if u["scope"] == "company")


def submit(api, persona, prompt: str = "What is 2 + 2?") -> str:
    response = api.post(TASKS, {"prompt": prompt}, format="json", HTTP_AUTHORIZATION=f"Bearer {persona.key}")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def cancel_over(path: str, persona, *frames: dict) -> None:
    """Send the frames, then read until the task's done event comes back."""
    async def main() -> None:
        ws = WebsocketCommunicator(application, f"{path}?token={persona.key}", headers=[(b"host", b"testserver")])
        connected, _ = await ws.connect(timeout=10)
        assert connected
        for frame in frames:
            await ws.send_json_to(frame)
        for _ in range(50):  # the socket's frames until the cancel shows in the log
            answer = await ws.receive_json_from(timeout=10)
            if answer.get("type") == "error":
                raise AssertionError(answer)
            event = answer.get("data", answer)
            if event.get("type") == "done":
                break
        await ws.disconnect()

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.fixture
def budgeted(db):
    """Dora's company is new to this run (ids are never reused), so the budget state in Redis is
    its own: no reservation another test left, nor their expiry, moves what it holds."""
    dora = make_persona("dora", "dora-and-co", "web")
    Budget.objects.create(company_id=dora.tenant.company_id, period="month", limit_usd=Decimal("5.00"))
    return dora


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_queued_task_over_the_task_socket_frees_its_hold(api, budgeted):
    before = held(budgeted)  # what earlier tests of this run left in the company's budget
    task_id = submit(api, budgeted)
    assert held(budgeted) > before

    cancel_over(f"{TASKS}/{task_id}/ws", budgeted, {"type": "cancel"})

    assert Task.objects.get(pk=task_id).status == TaskStatus.CANCELLED
    assert held(budgeted) == pytest.approx(before, abs=1e-9)


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_queued_task_over_the_multiplexed_socket_frees_its_hold(api, budgeted):
    before = held(budgeted)  # what earlier tests of this run left in the company's budget
    task_id = submit(api, budgeted)
    assert held(budgeted) > before

    cancel_over("/mageagent/ws", budgeted, {"type": "subscribe-task", "taskId": task_id, "after": 0},
                {"type": "cancel-task", "taskId": task_id})

    assert Task.objects.get(pk=task_id).status == TaskStatus.CANCELLED
    assert held(budgeted) == pytest.approx(before, abs=1e-9)


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_queued_task_from_the_admin_frees_its_hold(api, admin_client, budgeted):
    before = held(budgeted)  # what earlier tests of this run left in the company's budget
    task_id = submit(api, budgeted)
    assert held(budgeted) > before

    admin_client.post(CHANGELIST, {"action": "cancel_tasks", "_selected_action": [task_id]}, follow=True)

    assert Task.objects.get(pk=task_id).status == TaskStatus.CANCELLED
    assert held(budgeted) == pytest.approx(before, abs=1e-9)


@pytest.mark.django_db
def test_cancelling_twice_gives_back_the_hold_once(api, budgeted):
    before = held(budgeted)
    first, second = submit(api, budgeted), submit(api, budgeted)
    one_task = (held(budgeted) - before) / 2

    for _ in range(2):
        api.post(f"{TASKS}/{first}/cancel", HTTP_AUTHORIZATION=f"Bearer {budgeted.key}")

    assert held(budgeted) - before == pytest.approx(one_task, abs=1e-9)  # the second task still holds its own
    assert Task.objects.get(pk=second).status == TaskStatus.QUEUED


def retry_from_admin(admin_client, task_id: str):
    return admin_client.post(CHANGELIST, {"action": "retry_tasks", "_selected_action": [task_id]}, follow=True)


@pytest.mark.django_db
def test_admin_retry_is_refused_a_model_the_catalog_no_longer_serves(api, admin_client, alice):
    model = "gpt-4o-mini"
    created = api.post(TASKS, {"prompt": "Plan the sprint", "model": model}, format="json",
                       HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    services.task_cancel(task=Task.objects.get(pk=created["id"]))
    entry = Model.objects.get(id=model)
    entry.enabled = False
    entry.save()
    try:
        with pytest.raises(ValidationFailed, match="disabled"):
            services.task_retry(task=Task.objects.get(pk=created["id"]))
    finally:
        entry.enabled = True
        entry.save()  # the process's cached catalog must not outlive this test's rollback

    assert Task.objects.filter(company_id=alice.tenant.company_id).count() == 1


@pytest.mark.django_db
def test_admin_retry_is_refused_past_the_budget(api, alice):
    created = api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json",
                       HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    services.task_cancel(task=Task.objects.get(pk=created["id"]))
    Budget.objects.create(company_id=alice.tenant.company_id, period="month", limit_usd=Decimal("0.0000001"))

    with pytest.raises(BudgetExceeded):
        services.task_retry(task=Task.objects.get(pk=created["id"]))

    assert Task.objects.filter(company_id=alice.tenant.company_id).count() == 1


@pytest.mark.django_db
def test_an_admin_retry_past_the_budget_is_a_warning_on_the_page_and_no_task(api, admin_client, alice):
    created = api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json",
                       HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    services.task_cancel(task=Task.objects.get(pk=created["id"]))
    Budget.objects.create(company_id=alice.tenant.company_id, period="month", limit_usd=Decimal("0.0000001"))

    page = retry_from_admin(admin_client, created["id"])

    assert page.status_code == 200
    assert f"Not retried {created['id']}" in page.content.decode()
    assert Task.objects.filter(company_id=alice.tenant.company_id).count() == 1


@pytest.mark.django_db
def test_an_admin_retry_of_a_running_task_is_refused_by_the_service(api, admin_client, alice):
    created = api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json",
                       HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()

    page = retry_from_admin(admin_client, created["id"])

    assert "only failed or cancelled tasks can be retried" in page.content.decode()
    assert Task.objects.filter(company_id=alice.tenant.company_id).count() == 1
