"""The dry run (POST /route) is one service: the same checks and caps a submit gets."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings

from mageagent.errors import ValidationFailed
from routing.models import Budget, Model
from tasks.services import task_route_preview as route_preview

pytestmark = pytest.mark.django_db


def test_a_preview_is_refused_a_disabled_model_as_a_submit_is(alice):
    entry = Model.objects.get(id="gpt-4o-mini")
    entry.enabled = False
    entry.save()  # through save(): the catalog's cache hears of it
    try:
        with pytest.raises(ValidationFailed, match="disabled"):
            route_preview(tenant=alice.tenant, prompt="What is 2 + 2?", model="gpt-4o-mini")
    finally:
        entry.enabled = True
        entry.save()  # the process's cached catalog must not outlive this test's rollback


def test_a_budgeted_company_sees_the_output_cap_its_tasks_get(alice, charlie):
    Budget.objects.create(company_id=alice.tenant.company_id, period="month", limit_usd=Decimal("5.00"))

    capped = route_preview(tenant=alice.tenant, prompt="What is 2 + 2?").as_dict()
    free = route_preview(tenant=charlie.tenant, prompt="What is 2 + 2?").as_dict()

    assert capped["max_tokens"] <= settings.MAGEAGENT_ROUTING["BUDGET_MAX_OUTPUT_TOKENS"]
    assert free["max_tokens"] != capped["max_tokens"]
