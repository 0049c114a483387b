"""Fair scheduling through the services, with task rows: the backlog limit (429 queue_full),
weights and limits saved at run time, the reconciler's recovery of what a dispatcher or
Redis lost, and what /queue/metrics shows."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from mageagent.tenancy.models import App, Company
from tasks import events, fair, housekeeping, services
from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db
TASKS = "/mageagent/api/v1/tasks"


@pytest.fixture(autouse=True)
def _broker_kept_its_data() -> None:
    events.sync_client().set(housekeeping.BROKER_MARK_KEY, "1")


@pytest.fixture
def fair_knobs(settings, private_queue):
    """This test's own queue (so its own fair keys) and a setter of fair settings."""

    def set_(**values: object) -> None:
        if "WINDOW" in values:  # a fixed window: the tests count what it holds
            values["WINDOW_MIN"] = values["WINDOW"]
        settings.MAGEAGENT = {**settings.MAGEAGENT, **{f"FAIR_{k}": v for k, v in values.items()}}

    set_(WINDOW=1, CONFIG_CACHE_S=0.0)
    return set_


def make_task(persona, prompt: str = "Summarise the report", priority: int = 0) -> Task:
    # Inside the test transaction on_commit never fires: the test dispatches. Tasks created
    # within one millisecond tie in their app's queue (then the ids decide): a millisecond
    # apart, they keep the order the test made them in.
    task, _ = services.task_create(tenant=persona.tenant, prompt=prompt, priority=priority)
    time.sleep(0.002)
    return task


def broker_ids(client, name: str) -> list[str]:
    ids = []
    for key in [name] + [f"{name}:{p}" for p in range(1, 10)]:
        for raw in client.lrange(key, 0, -1):
            ids.append(json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0])
    return ids


def post(api, persona, body):
    return api.post(TASKS, body, format="json", HTTP_AUTHORIZATION=f"Bearer {persona.key}")


# --- the backlog limit --------------------------------------------------------------------------
def test_an_app_past_its_backlog_limit_gets_429_queue_full_and_nothing_is_created(api, alice, bob, fair_knobs):
    App.objects.filter(pk=alice.tenant.app_id).update(max_backlog=2)
    for persona in (alice, alice, alice, bob):  # one sent at once, two wait: alice's app is full
        services.task_dispatch(task=make_task(persona))
    before = Task.objects.count()

    refused = post(api, alice, {"prompt": "one more"})
    other_app = post(api, bob, {"prompt": "bob's app has no limit"})

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.json()["error"]["details"]["max_backlog"] == 2
    assert int(refused["Retry-After"]) >= 1
    assert other_app.status_code == 202
    assert Task.objects.count() == before + 1


def test_an_app_under_its_backlog_limit_is_accepted(api, alice, fair_knobs):
    App.objects.filter(pk=alice.tenant.app_id).update(max_backlog=5)
    services.task_dispatch(task=make_task(alice))

    assert post(api, alice, {"prompt": "room for me"}).status_code == 202


# --- settings saved at run time -----------------------------------------------------------------
def test_a_weight_saved_in_the_admin_applies_to_the_next_pick(alice, charlie, fair_knobs,
                                                              django_capture_on_commit_callbacks):
    first = make_task(alice)
    services.task_dispatch(task=first)
    acme = [make_task(alice) for _ in range(6)]
    globex = [make_task(charlie) for _ in range(6)]
    for task in acme + globex:
        services.task_dispatch(task=task)
    company = Company.objects.get(pk=alice.tenant.company_id)
    company.fair_weight = 2
    with django_capture_on_commit_callbacks(execute=True):
        company.save()

    order = []
    current = str(first.id)
    for _ in range(9):
        services.task_picked(task_id=current)
        current = fair.fair_window_ids()[0]
        order.append(current)

    names = {str(t.id): "a" for t in acme} | {str(t.id): "g" for t in globex}
    # Globex first (acme was charged for the first task), then acme's turns cost it half
    # what globex's cost: two to one once it caught up. At weight 1 they would alternate.
    assert "".join(names[t] for t in order) == "gagaagaag"


def test_an_in_flight_limit_saved_in_the_admin_holds_the_next_task_back(alice, fair_knobs,
                                                                        django_capture_on_commit_callbacks):
    fair_knobs(WINDOW=8)
    app = App.objects.get(pk=alice.tenant.app_id)
    app.max_in_flight = 1
    with django_capture_on_commit_callbacks(execute=True):
        app.save()
    tasks = [make_task(alice) for _ in range(3)]
    for task in tasks:
        services.task_dispatch(task=task)

    assert fair.fair_window_ids() == [str(tasks[0].id)]
    services.task_picked(task_id=str(tasks[0].id))
    assert fair.fair_window_ids() == []  # running: still its one slot
    services.task_start(task=tasks[0], worker="w", routing=None, steps=[])
    with django_capture_on_commit_callbacks(execute=True):
        services.task_fail(task_id=str(tasks[0].id), attempt=1, error={"code": "provider_error"})
    assert fair.fair_window_ids() == [str(tasks[1].id)]


# --- what the reconciler recovers ------------------------------------------------------------------
def test_a_task_picked_by_a_dispatcher_that_died_before_sending_is_sent_by_the_reconciler(alice, fair_knobs,
                                                                                         private_queue):
    name, client = private_queue
    fair_knobs(LOST_AFTER_S=5.0)
    task = make_task(alice)
    # The pick without the send: what a process killed between the two leaves behind.
    picked = fair.fair_admit(task_id=str(task.id), company_id=task.company_id, app_id=task.app_id,
                             cost=fair.FairCost(prompt=0, answer=10, answer_capped=True),
                             priority=0, since_ms=0, config=fair.FairConfig())
    assert [t for t, _ in picked] == [str(task.id)] and broker_ids(client, name) == []
    assert housekeeping.tasks_reconcile()["fair_resent"] == 0  # not yet: it may still be on its way
    events.sync_client().zadd(f"{fair.prefix()}win", {str(task.id): int((time.time() - 60) * 1000)})

    counts = housekeeping.tasks_reconcile()

    assert counts["fair_resent"] == 1
    assert broker_ids(client, name) == [str(task.id)]
    assert housekeeping.tasks_reconcile()["fair_resent"] == 0  # sent once


def test_a_task_sent_and_still_in_the_broker_is_not_sent_again(alice, fair_knobs, private_queue):
    name, client = private_queue
    task = make_task(alice)
    services.task_dispatch(task=task)
    events.sync_client().zadd(f"{fair.prefix()}win", {str(task.id): int((time.time() - 600) * 1000)})

    assert housekeeping.tasks_reconcile()["fair_resent"] == 0
    assert broker_ids(client, name) == [str(task.id)]


def test_queued_tasks_waiting_in_the_fair_queues_are_held_not_lost(alice, fair_knobs, private_queue):
    name, client = private_queue
    tasks = [make_task(alice) for _ in range(4)]
    for task in tasks:
        services.task_dispatch(task=task)
    client.delete(*[name] + [f"{name}:{p}" for p in range(1, 10)])  # the one sent was taken
    services.task_picked(task_id=str(tasks[0].id))
    Task.objects.filter(pk=tasks[0].pk).update(status=TaskStatus.PROCESSING)
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(updated_at=timezone.now() - timedelta(hours=1))

    counts = housekeeping.tasks_reconcile()

    assert counts["redispatched"] == 0
    assert broker_ids(client, name) == [str(tasks[1].id)]  # the next one, sent as the slot freed


def test_when_redis_lost_its_data_every_queued_task_goes_back_through_the_fair_queues(alice, charlie, fair_knobs,
                                                                                     private_queue):
    name, client = private_queue
    fair_knobs(WINDOW=2)
    tasks = [make_task(alice) for _ in range(3)] + [make_task(charlie) for _ in range(3)]
    for task in tasks:
        services.task_dispatch(task=task)
    # What a restart without persistence does: the broker's lists, the fair queues and the mark gone.
    redis = events.sync_client()
    redis.delete(*[name] + [f"{name}:{p}" for p in range(1, 10)], housekeeping.BROKER_MARK_KEY,
                 *redis.scan_iter(match=f"{fair.prefix()}*"))

    counts = housekeeping.tasks_reconcile()

    ids = [str(t.id) for t in tasks]
    sent = broker_ids(client, name)
    assert counts["redispatched"] == 6
    assert len(sent) == 2 and len(set(sent)) == 2  # the window, no more
    assert fair.fair_holding(ids) == set(ids)  # the rest wait for their turn: none lost


def test_in_flight_ids_of_ended_tasks_are_pruned_and_free_their_tenants_slot(alice, fair_knobs, private_queue):
    name, client = private_queue
    fair_knobs(WINDOW=8)
    App.objects.filter(pk=alice.tenant.app_id).update(max_in_flight=1)
    first, second = make_task(alice), make_task(alice)
    services.task_dispatch(task=first)
    services.task_dispatch(task=second)
    # It ended while Redis could not be told (the transition's on_commit never reached it).
    Task.objects.filter(pk=first.pk).update(status=TaskStatus.CANCELLED)

    counts = housekeeping.tasks_reconcile()

    assert counts["fair_pruned"] == 1
    assert sorted(broker_ids(client, name)) == sorted([str(first.id), str(second.id)])


# --- what callers see ----------------------------------------------------------------------------
def test_queue_metrics_show_the_callers_waiting_running_and_share_per_app(api, alice, bob, charlie, fair_knobs):
    fair_knobs(WINDOW=2)
    for persona in (alice, charlie, alice, bob, bob):
        services.task_dispatch(task=make_task(persona))

    body = api.get("/mageagent/api/v1/queue/metrics", HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()

    fair_part = body["fair"]
    assert (fair_part["waiting"], fair_part["running"], fair_part["share"], fair_part["weight"]) == (3, 1, 0.5, 1)
    apps = {a["app_id"]: a for a in fair_part["apps"]}
    assert (apps["web"]["waiting"], apps["web"]["running"]) == (1, 1)
    assert (apps["mobile"]["waiting"], apps["mobile"]["running"]) == (2, 0)
    assert "waiting" in body and "workers" in body  # the fields it always had


def test_a_backlog_limit_lets_tasks_in_while_redis_does_not_answer(api, alice, fair_knobs, monkeypatch):
    import redis

    App.objects.filter(pk=alice.tenant.app_id).update(max_backlog=1)

    def redis_down(**_: object) -> int:
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(fair, "fair_backlog", redis_down)

    assert post(api, alice, {"prompt": "accepted; the reconciler sends it"}).status_code == 202
