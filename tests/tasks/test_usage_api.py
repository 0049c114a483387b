"""GET /usage: a company's own tasks by status, tokens and cost, by day, app or model."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from routing.budgets import spend_record
from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db(transaction=True)
USAGE = "/mageagent/api/v1/usage"
TODAY = datetime.now(UTC).date()
YESTERDAY = TODAY - timedelta(days=1)


def get(api, persona, **params):
    return api.get(USAGE, params, HTTP_AUTHORIZATION=f"Bearer {persona.key}")


def book(persona, *, model: str, day: date, cost: float, prompt: int, completion: int, tasks: int = 1) -> None:
    spend_record(company_id=persona.tenant.company_id, app_id=persona.tenant.app_id, model=model, day=day,
                 cost_usd=cost, prompt_tokens=prompt, completion_tokens=completion, calls=1, tasks=tasks)


def task(persona, status: str, *, model: str = "gpt-4o-mini") -> Task:
    return Task.objects.create(company_id=persona.tenant.company_id, app_id=persona.tenant.app_id, prompt="p",
                               status=status, routing={"model": model, "model_used": model})


@pytest.fixture
def ledger(alice, bob, charlie):
    book(alice, model="gpt-4o-mini", day=TODAY, cost=0.5, prompt=100, completion=20)
    book(alice, model="gpt-4o-mini", day=TODAY, cost=0.25, prompt=50, completion=10)  # same row: added up
    book(alice, model="gpt-4.1", day=YESTERDAY, cost=2.0, prompt=300, completion=40)
    book(bob, model="gpt-4o-mini", day=TODAY, cost=1.0, prompt=10, completion=5)
    book(charlie, model="gpt-4o-mini", day=TODAY, cost=9.0, prompt=9000, completion=900)
    task(alice, TaskStatus.COMPLETED)
    task(alice, TaskStatus.FAILED)
    task(bob, TaskStatus.COMPLETED, model="gpt-4.1")
    task(charlie, TaskStatus.COMPLETED)
    task(charlie, TaskStatus.CANCELLED)


def test_usage_by_app_shows_only_the_callers_company(api, alice, ledger):
    body = get(api, alice, group_by="app").json()

    rows = {r["app"]: r for r in body["results"]}
    assert set(rows) == {"web", "mobile"}  # acme's apps; globex's spend is not there
    assert rows["web"]["prompt_tokens"] == 450 and rows["web"]["completion_tokens"] == 70
    assert rows["web"]["cost_usd"] == pytest.approx(2.75)
    assert rows["web"]["calls"] == 3 and rows["web"]["tasks_started"] == 3
    assert rows["web"]["tasks"]["completed"] == 1 and rows["web"]["tasks"]["failed"] == 1
    assert rows["mobile"]["tasks"]["completed"] == 1
    assert body["totals"]["cost_usd"] == pytest.approx(3.75)
    assert body["totals"]["tasks"]["cancelled"] == 0
    assert body["group_by"] == "app" and body["to"] == TODAY.isoformat()
    assert body["from"] == (TODAY - timedelta(days=29)).isoformat()


def test_another_company_sees_its_own_usage(api, charlie, ledger):
    body = get(api, charlie, group_by="model").json()

    assert [r["model"] for r in body["results"]] == ["gpt-4o-mini"]
    assert body["totals"]["cost_usd"] == pytest.approx(9.0)
    assert body["totals"]["tasks"]["completed"] == 1 and body["totals"]["tasks"]["cancelled"] == 1


def test_usage_by_day_and_by_model_splits_the_ledger(api, alice, ledger):
    by_day = {r["day"]: r for r in get(api, alice).json()["results"]}
    by_model = {r["model"]: r for r in get(api, alice, group_by="model").json()["results"]}

    assert by_day[YESTERDAY.isoformat()]["cost_usd"] == pytest.approx(2.0)
    assert by_day[TODAY.isoformat()]["cost_usd"] == pytest.approx(1.75)
    assert by_day[TODAY.isoformat()]["tasks"]["completed"] == 2  # alice's and bob's tasks, created today
    assert by_model["gpt-4.1"]["prompt_tokens"] == 300 and by_model["gpt-4.1"]["tasks"]["completed"] == 1
    assert by_model["gpt-4o-mini"]["cost_usd"] == pytest.approx(1.75)


def test_the_period_limits_what_is_counted(api, alice, ledger):
    body = get(api, alice, **{"from": TODAY.isoformat(), "to": TODAY.isoformat()}).json()

    assert [r["day"] for r in body["results"]] == [TODAY.isoformat()]
    assert body["totals"]["prompt_tokens"] == 160


@pytest.mark.parametrize("params", [
    {"group_by": "company"},
    {"from": "yesterday"},
    {"from": "2026-02-30"},
    {"from": "2026-05-02", "to": "2026-05-01"},
    {"from": ""},
    {"group_by": ""},
])
def test_bad_parameters_are_a_400_in_the_error_contract(api, alice, params):
    response = get(api, alice, **params)

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "validation_error"


def test_usage_needs_a_key(api):
    assert api.get(USAGE).status_code == 401


def test_a_long_period_is_answered_with_the_days_that_have_usage(api, alice, ledger):
    response = get(api, alice, **{"from": "2000-01-01", "group_by": "day"})

    assert response.status_code == 200, response.content
    assert response.json()["from"] == "2000-01-01"
