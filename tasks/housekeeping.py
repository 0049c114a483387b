"""Keeping the Task table the ledger: re-running what the broker or a dead worker lost,
closing logs a crash left open, and pruning old tasks as the seed's queue did."""

from __future__ import annotations

import base64
import logging
from contextlib import suppress
from datetime import timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from mageagent.celery import app
from mageagent.redis import sync_client
from tools.services import files_prune

from . import events, fair, services
from .models import TERMINAL, Task, TaskStatus
from .runtime.heartbeat import held_by

logger = logging.getLogger(__name__)


# A key the reconciler keeps in the broker's Redis. Its absence means that Redis lost its
# data (restarted without persistence, or flushed): every queued task's message went with
# it, so they are dispatched again at once rather than after RECONCILE_QUEUED_AFTER_S.
BROKER_MARK_KEY = "ma:broker-mark"


def _queue_names() -> list[str]:
    """The broker's lists of the task queue, one per priority."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS["sep"]
    return [queue] + [f"{queue}{sep}{p}" for p in settings.CELERY_BROKER_TRANSPORT_OPTIONS["priority_steps"][1:]]


def _broker_state() -> tuple[int, bool]:
    """(messages waiting in the task queue at any priority, True when the broker's Redis
    lost its data since the last run)."""
    names = _queue_names()
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        backlog = sum(int(client.llen(name)) for name in names)
        lost = bool(client.set(BROKER_MARK_KEY, "1", nx=True))
        return backlog, lost


def _broker_backlog() -> int:
    return _broker_state()[0]


def _requeue_lost(task: Task) -> str:
    """A processing task whose worker is gone: run it again, or fail it when out of attempts."""
    # Fence the old attempt if it is only partitioned, unless a newer attempt already holds
    # the log (this row was read before that attempt started: the decision is stale).
    if events.claim(str(task.id), "reconciler", unless_owned_by_other_than=f"{task.attempts}-{task.worker}") < 0:
        return "skipped"
    error = {"code": "worker_lost", "message": "the worker running this task stopped"}
    if task.attempts >= settings.MAGEAGENT["TASK_MAX_ATTEMPTS"]:
        if services.task_fail(task_id=str(task.id), attempt=task.attempts, error=error, owner="reconciler"):
            return "failed"
        return "skipped"
    if services.task_requeue(task_id=str(task.id), attempt=task.attempts, steps=task.steps, routing=task.routing,
                             error=error, owner="reconciler"):
        services.task_dispatch(task=task)
        return "requeued"
    return "skipped"


# What task_dispatch reads of a row: its tenant, its place in the queue and its cost.
DISPATCH_FIELDS = ("id", "company_id", "app_id", "priority", "created_at", "prompt", "system", "messages",
                   "max_tokens")


def _broker_task_ids() -> set[str]:
    """The task ids of the messages waiting in the broker's queue (a few: at most the fair
    window, plus messages sent around it)."""
    names = _queue_names()
    ids: set[str] = set()
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        for name in names:
            for raw in client.lrange(name, 0, -1):
                with suppress(ValueError, KeyError, IndexError, TypeError):
                    ids.add(str(orjson.loads(base64.b64decode(orjson.loads(raw)["body"]))[0][0]))
    return ids


def _fair_window_sweep() -> int:
    """Tasks sent to the broker long ago and never taken: a worker whose pickup could not
    tell Redis (the row moved on: the slot is freed), or a sender that died between the fair
    pick and the send (the row is queued and no message holds it: queued again)."""
    old = fair.fair_window_older_than(settings.MAGEAGENT["FAIR_LOST_AFTER_S"])
    if not old:
        return 0
    queued = {str(t.id): t for t in Task.objects.filter(pk__in=old, status=TaskStatus.QUEUED).only(*DISPATCH_FIELDS)}
    in_broker = _broker_task_ids() if queued else set()
    resent = 0
    for task_id in old:
        task = queued.get(task_id)
        if task is None:
            services.task_picked(task_id=task_id)
        elif task_id not in in_broker:
            services.task_dispatch(task=task, again=True)
            resent += 1
    return resent


def _fair_in_flight_prune() -> int:
    """In-flight ids whose tasks ended without the fair queues hearing of it (Redis failed
    at that moment, or the task's row was deleted): they hold no slot any longer."""
    ids = fair.fair_in_flight_ids()
    if not ids:
        return 0
    alive = {str(pk) for pk in Task.objects.filter(pk__in=ids).exclude(status__in=TERMINAL)
             .values_list("pk", flat=True)}
    ended = [task_id for task_id in ids if task_id not in alive]
    for task_id in ended:
        services.task_fair_release(task_id=task_id)
    return len(ended)


def _log_exists(task_id: str) -> bool:
    return bool(sync_client().exists(events.meta_key(task_id)))


def tasks_reconcile(*, after_outage: bool = False) -> dict[str, Any]:
    """`after_outage`: Redis was unreachable since the last run, so a queued task's dispatch
    may have failed meanwhile: queued rows are sent again without waiting for
    RECONCILE_QUEUED_AFTER_S, as when the broker lost its data."""
    now = timezone.now()
    counts = {"requeued": 0, "failed": 0, "redispatched": 0, "closed": 0}
    grace = timedelta(seconds=settings.MAGEAGENT["WORKER_HEARTBEAT_S"] * 3)
    processing = list(Task.objects.filter(status=TaskStatus.PROCESSING, updated_at__lt=now - grace)
                      .only("id", "status", "worker", "attempts", "steps", "routing", *DISPATCH_FIELDS))
    held = held_by({task.worker for task in processing})
    for task in processing:
        # A dead worker, or a live one that dropped the task (its Redis or database calls
        # failed and it could not hand the task back): either way nobody runs it.
        if str(task.id) not in (held[task.worker] or ()):
            outcome = _requeue_lost(task)
            counts[outcome] = counts.get(outcome, 0) + 1
    backlog, broker_lost = _broker_state()
    broker_lost = broker_lost or after_outage
    stale = now - timedelta(seconds=settings.MAGEAGENT["RECONCILE_QUEUED_AFTER_S"])
    queued = Task.objects.filter(status=TaskStatus.QUEUED, updated_at__lt=now if broker_lost else stale)
    # When the broker lost its data, every queued row's message is gone (and the fair queues
    # with it, in the same Redis); otherwise only when the broker holds nothing is an old
    # queued row that no fair queue holds lost (its dispatch failed), not merely waiting.
    # A message sent twice is harmless: the start is guarded.
    if (broker_lost or backlog == 0) and queued.exists():
        rows = list(queued.order_by("created_at").only(*DISPATCH_FIELDS)[:5000])
        holding = fair.fair_holding([str(task.id) for task in rows])
        for task in rows:
            if str(task.id) not in holding:
                services.task_dispatch(task=task)
                counts["redispatched"] += 1
    counts["fair_resent"] = _fair_window_sweep()
    counts["fair_pruned"] = _fair_in_flight_prune()
    recent = Task.objects.filter(status__in=(TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED),
                                 updated_at__gte=now - timedelta(hours=1), updated_at__lt=now - grace)
    for task in recent.iterator():
        # A log that no longer exists (expired, or never written) is left alone: readers then
        # replay the stored content; a fresh log holding only `done` would hide it.
        if _log_exists(str(task.id)) and not events.is_closed(str(task.id)):
            services.task_close_log(task=task)
            counts["closed"] += 1
    if any(counts.values()):
        logger.info("reconciled: %s", counts)
    return counts


def _prune(statuses: tuple[str, ...], days: float, keep: int) -> int:
    qs = Task.objects.filter(status__in=statuses)
    cutoff = timezone.now() - timedelta(days=days)
    deleted, _ = qs.filter(completed_at__lt=cutoff).delete()
    newest = qs.order_by("-completed_at").values_list("completed_at", flat=True)[keep:keep + 1]
    if keep >= 0 and newest:
        extra, _ = qs.filter(Q(completed_at__lte=newest[0])).delete()
        deleted += extra
    return deleted


def tasks_prune() -> dict[str, Any]:
    cfg = settings.MAGEAGENT
    return {
        "completed": _prune((TaskStatus.COMPLETED, TaskStatus.CANCELLED), cfg["RETENTION_COMPLETED_DAYS"],
                            cfg["RETENTION_COMPLETED_MAX"]),
        "failed": _prune((TaskStatus.FAILED,), cfg["RETENTION_FAILED_DAYS"], cfg["RETENTION_FAILED_MAX"]),
        "files": files_prune(),
    }
