"""Budgets: atomic reservations in Redis, settled to the actual cost, refused with 402."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from mageagent.errors import BudgetExceeded
from routing.budgets import (
    budget_context,
    budget_reserve,
    budget_settle,
    budget_usage,
    spend_record,
    task_reservation_id,
)
from routing.models import Budget, Spend
from routing.selectors import budgets_cache
from tasks import events
from tasks.models import Task

pytestmark = pytest.mark.django_db

TASKS = "/mageagent/api/v1/tasks"


def make_budget(persona, limit: str, *, period: str = "month", app: bool = False) -> Budget:
    return Budget.objects.create(company_id=persona.tenant.company_id,
                                 app_id=persona.tenant.app_id if app else None, period=period,
                                 limit_usd=Decimal(limit))


def use(persona) -> dict:
    ctx = budget_context(company_id=persona.tenant.company_id, app_id=persona.tenant.app_id)
    return {(u["scope"], u["period"]): (u["spent_usd"], u["reserved_usd"]) for u in budget_usage(ctx)}


def test_concurrent_reservations_never_take_more_than_the_budget(alice):
    make_budget(alice, "1.00")
    ctx = budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id)
    granted, refused = [], []

    def reserve(i: int) -> None:
        try:
            budget_reserve(ctx, rid=f"r{i}", amount_usd=0.09)
            granted.append(i)
        except BudgetExceeded:
            refused.append(i)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(granted) == 11 and len(refused) == 39
    assert use(alice)[("company", "month")] == (0.0, pytest.approx(0.99))


def test_settling_swaps_the_reservation_for_the_actual_cost(alice):
    make_budget(alice, "1.00")
    ctx = budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id)
    budget_reserve(ctx, rid="a", amount_usd=0.6)

    with pytest.raises(BudgetExceeded):
        budget_reserve(ctx, rid="b", amount_usd=0.6)
    budget_settle(ctx, rid="a", actual_usd=0.25)
    budget_reserve(ctx, rid="b", amount_usd=0.6)

    assert use(alice)[("company", "month")] == (pytest.approx(0.25), pytest.approx(0.6))


def test_reserving_again_for_the_same_task_only_tops_up(alice):
    make_budget(alice, "1.00")
    ctx = budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id)

    budget_reserve(ctx, rid="task:1", amount_usd=0.5)
    budget_reserve(ctx, rid="task:1", amount_usd=0.7)
    budget_reserve(ctx, rid="task:1", amount_usd=0.2)

    assert use(alice)[("company", "month")] == (0.0, pytest.approx(0.7))


def test_every_budget_of_the_company_and_its_app_must_have_room(alice, bob):
    make_budget(alice, "10.00")
    make_budget(alice, "0.30", period="day", app=True)  # alice's app only
    alice_ctx = budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id)
    bob_ctx = budget_context(company_id=bob.tenant.company_id, app_id=bob.tenant.app_id)

    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(alice_ctx, rid="a", amount_usd=0.5)
    budget_reserve(bob_ctx, rid="b", amount_usd=0.5)

    assert refused.value.details["scope"] == "app" and refused.value.details["period"] == "day"
    assert use(alice)[("company", "month")] == (0.0, pytest.approx(0.5))


def test_spend_already_in_the_ledger_counts_against_the_budget(alice):
    make_budget(alice, "1.00")
    spend_record(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, cost_usd=0.8, prompt_tokens=10,
                 completion_tokens=5, calls=1)
    ctx = budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id)

    with pytest.raises(BudgetExceeded):
        budget_reserve(ctx, rid="a", amount_usd=0.3)
    budget_reserve(ctx, rid="a", amount_usd=0.2)


def test_an_expired_reservation_is_given_back(alice, settings):
    settings.MAGEAGENT_ROUTING = {**settings.MAGEAGENT_ROUTING, "RESERVATION_TTL_S": 1}
    make_budget(alice, "1.00")
    ctx = budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id)
    budget_reserve(ctx, rid="abandoned", amount_usd=0.9)

    deadline = time.monotonic() + 10
    while True:
        try:
            budget_reserve(ctx, rid="next", amount_usd=0.9)
            break
        except BudgetExceeded:
            assert time.monotonic() < deadline, "the abandoned reservation never expired"
            time.sleep(0.2)


def test_the_ledger_adds_up_per_company_app_and_day(alice):
    for cost in (0.1, 0.25):
        spend_record(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, cost_usd=cost,
                     prompt_tokens=100, completion_tokens=10, calls=2)

    row = Spend.objects.get(company_id=alice.tenant.company_id)
    assert (row.cost_usd, row.prompt_tokens, row.completion_tokens, row.calls, row.tasks) == (
        Decimal("0.35"), 200, 20, 4, 2)


@pytest.mark.django_db(transaction=True)
def test_workers_booking_the_same_new_day_at_once_lose_nothing(alice):
    from django.db import connection

    barrier = threading.Barrier(8)

    def book() -> None:
        try:
            barrier.wait()
            spend_record(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, cost_usd=0.125,
                         prompt_tokens=10, completion_tokens=1, calls=1)
        finally:
            connection.close()

    threads = [threading.Thread(target=book) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    row = Spend.objects.get(company_id=alice.tenant.company_id)
    assert (row.cost_usd, row.prompt_tokens, row.calls, row.tasks) == (Decimal("1.000"), 80, 8, 8)


def test_a_task_that_would_exceed_the_budget_is_refused_with_402(api, alice, bob):
    route = api.post("/mageagent/api/v1/route", {"prompt": "What is 2 + 2?"}, format="json",
                     HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    make_budget(alice, "0.0000001")

    refused = api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert route["estimated_cost_usd"] > 0.0000001
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.json()["error"]["details"]["scope"] == "company"
    assert Task.objects.filter(company_id=alice.tenant.company_id).count() == 0
    assert use(bob)[("company", "month")] == (0.0, 0.0)  # nothing held for the refused request


def test_an_accepted_task_holds_its_estimate_and_a_replay_holds_nothing_more(api, alice):
    make_budget(alice, "5.00")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {alice.key}", "HTTP_IDEMPOTENCY_KEY": "k1"}

    first = api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json", **headers)
    again = api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json", **headers)

    assert (first.status_code, again.status_code) == (202, 200)
    held = use(alice)[("company", "month")][1]
    decision = api.post("/mageagent/api/v1/route", {"prompt": "What is 2 + 2?"}, format="json",
                        HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    assert held == pytest.approx(decision["estimated_cost_usd"], abs=1e-9)
    client = events.sync_client()
    namespace = budget_context(company_id=alice.tenant.company_id, app_id=None).scopes[0].key.split(":budget:")[0]
    assert client.exists(f"{namespace}:rsv:{task_reservation_id(first.json()['id'])}")


def test_cancelling_a_queued_task_frees_what_it_held(api, alice):
    make_budget(alice, "5.00")
    task = api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json",
                    HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    assert use(alice)[("company", "month")][1] > 0

    response = api.post(f"{TASKS}/{task['id']}/cancel", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert use(alice)[("company", "month")] == (0.0, 0.0)



@pytest.fixture
def budget_cache(settings):
    """Budgets cached as in production (the suite turns the cache off)."""
    settings.MAGEAGENT_ROUTING = {**settings.MAGEAGENT_ROUTING, "BUDGET_CACHE_S": 60.0}
    budgets_cache.forget()
    yield
    budgets_cache.forget()


def test_a_task_enqueued_right_after_a_budget_is_created_is_reserved(api, alice, budget_cache):
    api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}")
    make_budget(alice, "5.00")  # while the app's "no budgets" is cached

    api.post(TASKS, {"prompt": "What is 2 + 2?"}, format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert use(alice)[("company", "month")][1] > 0


def test_a_budget_changed_by_another_process_binds_this_processes_next_task(alice, budget_cache):
    assert not budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id).active
    # Another process (the web, the admin) writes the row and, once committed, bumps the
    # version; this process (a worker) still has "no budgets" cached.
    Budget.objects.bulk_create([Budget(company_id=alice.tenant.company_id, period="month", limit_usd=Decimal("1"))])
    events.sync_client().incr(budgets_cache.version_key())

    assert budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id).active


def test_saving_or_deleting_a_budget_announces_it_once_committed(alice, budget_cache,
                                                                 django_capture_on_commit_callbacks):
    before = budgets_cache.version()
    with django_capture_on_commit_callbacks(execute=True):
        budget = make_budget(alice, "1.00")
    created = budgets_cache.version()
    with django_capture_on_commit_callbacks(execute=True):
        budget.delete()

    assert before != created != budgets_cache.version()
    assert not budget_context(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id).active
