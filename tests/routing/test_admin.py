"""Staff see and edit the catalog, budgets, spend and routing decisions in the admin."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client

from routing.budgets import spend_record
from routing.models import Budget, Model
from routing.selectors import model_get
from tasks import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db: None) -> Client:
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    return client


def test_staff_disable_a_model_and_set_its_tier_from_the_changelist(staff):
    assert model_get("gpt-4o") is not None and model_get("gpt-4o").enabled

    response = staff.post("/admin/routing/model/", {"action": "disable", "_selected_action": ["gpt-4o"]}, follow=True)

    assert response.status_code == 200
    assert Model.objects.get(id="gpt-4o").enabled is False
    assert model_get("gpt-4o").enabled is False  # the process's catalog cache heard of it


def test_staff_override_a_models_price_and_capabilities(staff):
    page = staff.get("/admin/routing/model/gpt-4o-mini/change/")
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k in form.fields}
    data.update({"enabled": "on", "auto_route": "on", "quality_tier": "2", "input_cost_override": "0.000001",
                 "supports_tools_override": "false", "notes": "negotiated price"})

    response = staff.post("/admin/routing/model/gpt-4o-mini/change/", data, follow=True)

    assert response.status_code == 200
    spec = model_get("gpt-4o-mini")
    assert (spec.tier, spec.input_cost_per_token, spec.supports_tools) == (2, 1e-6, False)


def test_budgets_spend_and_routing_decisions_are_visible(staff, alice):
    Budget.objects.create(company_id=alice.tenant.company_id, period="month", limit_usd=Decimal("5"))
    spend_record(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, cost_usd=0.125, prompt_tokens=10,
                 completion_tokens=20, calls=1)
    task, _ = services.task_create(tenant=alice.tenant, prompt="hi")
    services.task_start(task=task, worker="w", routing={
        "model": "gpt-4o-mini", "reason": "simple prompt", "estimated_cost_usd": 0.001, "actual_cost_usd": 0.0004,
        "fallbacks": [{"from": "gpt-4o-mini", "to": "gemini/gemini-2.5-flash-lite"}]}, steps=[])

    budgets = staff.get("/admin/routing/budget/").content.decode()
    spend = staff.get("/admin/routing/spend/").content.decode()
    decisions = staff.get("/admin/routing/routedtask/").content.decode()
    decision = staff.get(f"/admin/routing/routedtask/{task.id}/change/").content.decode()

    assert "$0.125000" in budgets and "0.125" in spend
    assert "simple prompt" in decisions and "0.0004" in decisions
    assert "gemini/gemini-2.5-flash-lite" in decision
