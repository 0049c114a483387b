from __future__ import annotations

import uuid
from datetime import timedelta

import orjson
import pytest
from django.utils import timezone

from tasks import events, housekeeping, services
from tasks.models import Task, TaskStatus
from tasks.runtime import executor
from tasks.runtime.heartbeat import WORKER_ID, WORKER_KEY, held
from tasks.tasks import task_execute_job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _broker_kept_its_data() -> None:
    # The broker's Redis has not lost its data since a reconciler last looked (the shared
    # test Redis keeps the mark); the tests of a lost broker delete it.
    events.sync_client().set(housekeeping.BROKER_MARK_KEY, "1")


def make_task(persona, prompt: str = "Explain quantum computing") -> Task:
    # Inside the test transaction on_commit never fires: nothing reaches the broker.
    task, _ = services.task_create(tenant=persona.tenant, prompt=prompt)
    return task


def start(task: Task, worker: str = "gone-host:1:abc") -> Task:
    started = services.task_start(task=task, worker=worker, routing={"model": "gpt-4o-mini"}, steps=[])
    assert started is not None
    return started


def finish(task: Task, status: str, *, ago: timedelta = timedelta(0), content: str = "done") -> Task:
    if status == TaskStatus.CANCELLED:
        services.task_cancel(task=task)  # while queued: closes at once
    else:
        start(task)
    if status == TaskStatus.COMPLETED:
        services.task_complete(task_id=str(task.id), attempt=task.attempts, steps=[], routing=None,
                               result={"content": content, "finishReason": "stop"})
    elif status == TaskStatus.FAILED:
        services.task_fail(task_id=str(task.id), attempt=task.attempts, error={"code": "provider_error"})
    backdate(task, ago)
    return Task.objects.get(pk=task.pk)


def backdate(task: Task, ago: timedelta) -> None:
    # Test set-up only: age the row as time would.
    when = timezone.now() - ago
    rows = Task.objects.filter(pk=task.pk)
    rows.update(updated_at=when)
    rows.filter(completed_at__isnull=False).update(completed_at=when)


def age_processing(task: Task, ago: timedelta) -> None:
    Task.objects.filter(pk=task.pk).update(updated_at=timezone.now() - ago)


def log(task: Task) -> list[dict]:
    return [orjson.loads(raw) for raw in events.read_after(str(task.id), 0) or []]


@pytest.fixture
def knobs(settings):
    def set_(**values: object) -> None:
        settings.MAGEAGENT = {**settings.MAGEAGENT, **values}
    return set_


@pytest.fixture
def dispatched(monkeypatch) -> list[str]:
    """Task ids the reconciler sends to the broker. Recorded, not sent: a worker of the e2e
    stack may be consuming the shared test queue and would take the message first."""
    sent: list[str] = []
    monkeypatch.setattr(services, "task_dispatch", lambda *, task, again=False: sent.append(str(task.id)))
    return sent


# --- prune ----------------------------------------------------------------------------------------
def test_prune_removes_finished_tasks_older_than_their_retention(alice, knobs):
    knobs(RETENTION_COMPLETED_DAYS=1.0, RETENTION_FAILED_DAYS=7.0, RETENTION_COMPLETED_MAX=1000,
          RETENTION_FAILED_MAX=1000)
    old_completed = finish(make_task(alice), TaskStatus.COMPLETED, ago=timedelta(days=2))
    old_cancelled = finish(make_task(alice), TaskStatus.CANCELLED, ago=timedelta(days=2))
    fresh_completed = finish(make_task(alice), TaskStatus.COMPLETED, ago=timedelta(hours=1))
    recent_failure = finish(make_task(alice), TaskStatus.FAILED, ago=timedelta(days=2))
    old_failure = finish(make_task(alice), TaskStatus.FAILED, ago=timedelta(days=8))
    waiting = make_task(alice)
    backdate(waiting, timedelta(days=30))

    assert housekeeping.tasks_prune() == {"completed": 2, "failed": 1, "files": 0}
    left = set(Task.objects.values_list("id", flat=True))
    assert left == {fresh_completed.id, recent_failure.id, waiting.id}
    assert not {old_completed.id, old_cancelled.id, old_failure.id} & left


def test_prune_keeps_only_the_newest_finished_tasks_past_the_count_limit(alice, knobs):
    knobs(RETENTION_COMPLETED_DAYS=365.0, RETENTION_FAILED_DAYS=365.0, RETENTION_COMPLETED_MAX=2,
          RETENTION_FAILED_MAX=1)
    completed = [finish(make_task(alice), TaskStatus.COMPLETED, ago=timedelta(hours=h)) for h in (4, 3, 2, 1)]
    failed = [finish(make_task(alice), TaskStatus.FAILED, ago=timedelta(hours=h)) for h in (5, 1)]
    processing = start(make_task(alice))

    assert housekeeping.tasks_prune() == {"completed": 2, "failed": 1, "files": 0}
    left = set(Task.objects.values_list("id", flat=True))
    assert left == {completed[2].id, completed[3].id, failed[1].id, processing.id}


# --- reconcile: processing tasks of dead workers --------------------------------------------------
def test_a_processing_task_of_a_dead_worker_is_requeued_and_the_old_attempt_fenced(alice, dispatched, private_queue):
    task = start(make_task(alice))
    old_owner = f"1-{task.worker}"
    events.claim(str(task.id), old_owner)
    age_processing(task, timedelta(minutes=5))

    counts = housekeeping.tasks_reconcile()

    task.refresh_from_db()
    assert counts["requeued"] == 1
    assert (task.status, task.attempts, task.worker) == (TaskStatus.QUEUED, 2, "")
    assert dispatched == [str(task.id)]
    last = log(task)[-1]
    assert (last["type"], last["status"], last["error"]["code"]) == ("status", "queued", "worker_lost")
    assert events.append(str(task.id), events.encode("chunk", content="zombie"), owner=old_owner) == events.FENCED


def test_a_stale_decision_never_fences_off_a_newer_attempt(alice, dispatched, private_queue):
    task = start(make_task(alice))  # read as attempt 1 of a worker that looks dead
    # Meanwhile the task was handed back and attempt 2 started elsewhere, holding the log.
    events.claim(str(task.id), "2-another-worker")

    assert housekeeping._requeue_lost(task) == "skipped"
    assert events.append(str(task.id), events.encode("chunk", content="still mine"), owner="2-another-worker") > 0
    assert dispatched == []


def test_a_processing_task_out_of_attempts_fails_with_worker_lost(alice, knobs, dispatched, private_queue):
    knobs(TASK_MAX_ATTEMPTS=2)
    task = start(make_task(alice))
    services.task_requeue(task_id=str(task.id), attempt=1, steps=[])
    task.refresh_from_db()  # task_start starts the attempt the task was read at
    task = start(task)
    age_processing(task, timedelta(minutes=5))

    counts = housekeeping.tasks_reconcile()

    task.refresh_from_db()
    assert counts["failed"] == 1
    assert (task.status, task.error["code"]) == (TaskStatus.FAILED, "worker_lost")
    assert dispatched == []
    assert log(task)[-1]["type"] == "done" and events.is_closed(str(task.id))


def test_a_processing_task_of_a_live_worker_is_left_running(alice, dispatched, private_queue):
    worker = f"alive-{uuid.uuid4().hex[:6]}"
    task = start(make_task(alice), worker=worker)
    events.sync_client().set(WORKER_KEY + worker, f"{uuid.uuid4()},{task.id}", ex=60)
    try:
        age_processing(task, timedelta(minutes=5))
        housekeeping.tasks_reconcile()
    finally:
        events.sync_client().delete(WORKER_KEY + worker)
    task.refresh_from_db()
    assert (task.status, task.attempts) == (TaskStatus.PROCESSING, 1)
    assert dispatched == []


def test_a_processing_task_its_live_worker_no_longer_holds_is_requeued(alice, dispatched, private_queue):
    # The worker's heartbeat says it is alive, but not that it runs this task (its attempt
    # met a failing database or Redis and could not hand the task back).
    worker = f"alive-{uuid.uuid4().hex[:6]}"
    task = start(make_task(alice), worker=worker)
    events.sync_client().set(WORKER_KEY + worker, str(uuid.uuid4()), ex=60)
    try:
        age_processing(task, timedelta(minutes=5))
        counts = housekeeping.tasks_reconcile()
    finally:
        events.sync_client().delete(WORKER_KEY + worker)
    task.refresh_from_db()
    assert counts["requeued"] == 1
    assert (task.status, task.attempts) == (TaskStatus.QUEUED, 2)
    assert dispatched == [str(task.id)]


# --- reconcile: queued tasks the broker lost ------------------------------------------------------
def test_a_stale_queued_task_is_redispatched_when_the_broker_is_empty(alice, dispatched, private_queue):
    stale = make_task(alice, "lost in a Redis restart")
    age_processing(stale, timedelta(minutes=10))
    fresh = make_task(alice, "just enqueued")

    counts = housekeeping.tasks_reconcile()

    assert counts["redispatched"] == 1
    assert dispatched == [str(stale.id)]
    assert fresh.id not in dispatched


def test_a_stale_queued_task_is_not_redispatched_while_the_broker_has_a_backlog(alice, dispatched, private_queue):
    name, client = private_queue
    client.lpush(name, b"{}")
    stale = make_task(alice)
    age_processing(stale, timedelta(minutes=10))

    assert housekeeping.tasks_reconcile()["redispatched"] == 0
    assert dispatched == []


def test_every_queued_task_is_redispatched_at_once_when_the_broker_lost_its_data(alice, dispatched,
                                                                                private_queue):
    name, client = private_queue
    client.lpush(name, b"{}")  # messages sent since the restart do not hide what was lost
    older = make_task(alice, "queued before the restart")
    age_processing(older, timedelta(seconds=2))
    newer = make_task(alice, "queued just now")
    events.sync_client().delete(housekeeping.BROKER_MARK_KEY)  # what a restart without persistence does

    first = housekeeping.tasks_reconcile()
    second = housekeeping.tasks_reconcile()

    assert first["redispatched"] == 2
    assert dispatched == [str(older.id), str(newer.id)]
    assert second["redispatched"] == 0  # once: the mark is back


def test_the_broker_backlog_counts_messages_at_every_priority(private_queue):
    name, _ = private_queue
    assert housekeeping._broker_backlog() == 0
    for priority in (9, 4, 0):  # the API's 0, 5 and 9
        task_execute_job.apply_async(args=(str(uuid.uuid4()),), queue=name, priority=priority)
    assert housekeeping._broker_backlog() == 3


# --- reconcile: logs left open ----------------------------------------------------------------------
def completed_with_log_open(task: Task, content: str) -> Task:
    """A worker that died between its completion transition and its log's `done`."""
    start(task)
    events.append(str(task.id), events.encode("chunk", content=content))
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.COMPLETED, completed_at=timezone.now(),
                                           result={"content": content, "finishReason": "stop"})
    return Task.objects.get(pk=task.pk)


def test_a_completed_task_whose_log_was_left_open_gets_its_done_event(alice, dispatched, private_queue):
    task = completed_with_log_open(make_task(alice), "Hello world")
    backdate(task, timedelta(minutes=1))

    assert housekeeping.tasks_reconcile()["closed"] == 1

    last = log(task)[-1]
    assert (last["type"], last["status"], last["result"]["content"]) == ("done", "completed", "Hello world")
    assert events.is_closed(str(task.id))


def test_a_cancelled_task_whose_log_was_left_open_keeps_its_partial_content(alice, dispatched, private_queue):
    task = start(make_task(alice))
    events.append(str(task.id), events.encode("chunk", content="Hel"), events.encode("chunk", content="lo"))
    # The web process died between the cancel transition and closing the log.
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.CANCELLED, completed_at=timezone.now())
    backdate(task, timedelta(minutes=1))

    assert housekeeping.tasks_reconcile()["closed"] == 1

    task.refresh_from_db()
    last = log(task)[-1]
    assert (last["type"], last["status"], last["result"]["content"]) == ("done", "cancelled", "Hello")
    assert task.result["content"] == "Hello"


def test_a_finished_task_whose_log_expired_is_left_to_replay_from_the_row(alice, dispatched, private_queue):
    task = finish(make_task(alice), TaskStatus.COMPLETED, content="stored answer")
    events.sync_client().delete(events.stream_key(str(task.id)), events.meta_key(str(task.id)))
    backdate(task, timedelta(minutes=1))

    assert housekeeping.tasks_reconcile()["closed"] == 0
    assert events.read_after(str(task.id), 0) is None


def test_a_log_is_not_closed_while_its_worker_may_still_be_closing_it(alice, dispatched, private_queue):
    task = completed_with_log_open(make_task(alice), "done")

    assert housekeeping.tasks_reconcile()["closed"] == 0
    assert not events.is_closed(str(task.id))


@pytest.mark.django_db(transaction=True)  # the executor hands its connection back to the pool
def test_a_duplicate_message_of_a_running_task_leaves_it_in_the_heartbeat(alice, dispatched, private_queue):
    # The reconciler re-sends queued rows after an outage while the hand-back sends them too:
    # the second message must not take the running attempt out of the worker's heartbeat.
    task = start(make_task(alice), worker=WORKER_ID)
    held.add(str(task.id))  # the running attempt
    try:
        assert executor.execute(str(task.id)) is None  # the duplicate: the task is taken
        assert str(task.id) in held.snapshot().split(",")
    finally:
        held.discard(str(task.id))
    assert str(task.id) not in held.snapshot().split(",")
