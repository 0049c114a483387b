"""What the worker puts in front of the model before it calls it."""

from __future__ import annotations

import orjson
import pytest

from tasks.models import Task
from tasks.runtime.executor import _context
from tests.infra import free_port

pytestmark = pytest.mark.django_db


def make_task(persona, **context) -> Task:
    return Task.objects.create(company_id=persona.tenant.company_id, app_id=persona.tenant.app_id,
                               prompt="what is our refund policy?", context=context)


def test_additional_context_is_passed_through(alice):
    text, step_events, steps = _context(make_task(alice, additionalContext="Customer is on the Pro plan."))

    assert text == "Customer is on the Pro plan."
    assert steps == [] and step_events == []


def test_an_unreachable_graphrag_service_is_a_recorded_step_not_a_failed_task(alice, settings):
    settings.MAGEAGENT = {**settings.MAGEAGENT, "GRAPHRAG_URL": f"http://127.0.0.1:{free_port()}/retrieve"}

    text, step_events, steps = _context(make_task(alice, useGraphRAG=True, graphragQuery="refunds"))

    assert text == "" and steps == ["graphrag_retrieval"]
    step = orjson.loads(b"{" + step_events[0])
    assert step["name"] == "graphrag_retrieval" and step["detail"]["results"] == 0
    assert step["detail"]["error"]["code"] == "unavailable"
