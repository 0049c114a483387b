"""State changes of Task. Every status transition is one guarded UPDATE, so concurrent
actors (web cancel, worker, reconciler) never both win; the event log follows the winner.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import nullcontext, suppress
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

import orjson
from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from mageagent import metrics, tracing
from mageagent.celery import app as celery_app
from mageagent.errors import Conflict, QueueFull, ValidationFailed
from mageagent.logging import current_request_id
from mageagent.tenancy.auth import Tenant
from mageagent.tenancy.models import App, Company
from providers.conversation import has_images
from routing.budgets import budget_context, budget_hold, budget_release_task
from routing.services import RoutingDecision, model_select, model_validate
from tools.registry import tools_validate_requested

from . import events, fair, selectors
from .events import CANCEL_CHANNEL
from .models import TERMINAL, Task, TaskStatus
from .signals import task_finished

logger = logging.getLogger(__name__)

# Celery's stable name of tasks/tasks.py's task_execute_job: services send by the name, so
# they need not import the Celery module (which imports the worker, which calls services).
TASK_EXECUTE_JOB = "mageagent.task.execute"


# The inputs added after the first contract: part of a request (and of its hash) only when
# set, so a prompt-only request keeps the hash it always had.
INPUT_DEFAULTS: dict[str, Any] = {"messages": [], "system": None, "temperature": None, "top_p": None,
                                  "max_tokens": None, "stop": None, "seed": None, "response_format": None,
                                  "client_tools": [], "tool_choice": None}
IDEMPOTENCY_KEY_MAX = Task._meta.get_field("idempotency_key").max_length or 200


def _request_fields(*, prompt: str, model: str | None = None, context: dict[str, Any] | None = None,
                    tools: list[str] | None = None, stream: bool = True,
                    metadata: dict[str, Any] | None = None, priority: int = 0, **inputs: Any) -> dict[str, Any]:
    unknown = set(inputs) - set(INPUT_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown task fields: {sorted(unknown)}")
    fields = {"prompt": prompt, "model": model, "context": context or {}, "tools": tools or [],
              "stream": stream, "metadata": metadata or {}, "priority": priority}
    fields.update({name: value for name, value in inputs.items() if value is not None and value != []})
    return fields


def _request_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def task_idempotent_replay(*, tenant: Tenant, idempotency_key: str | None, **fields: Any) -> Task | None:
    """The task an earlier request with this Idempotency-Key created, when that request had
    the same body (Conflict when not); None when the key is new or expired. Callers look
    here first, so a replay returns the original task whatever changed since (budgets, the
    model catalog), as the contract promises."""
    if not idempotency_key:
        return None
    return _task_for_idempotency_key(tenant=tenant, key=idempotency_key,
                                     digest=_request_hash(_request_fields(**fields)))


def task_submit(*, tenant: Tenant, idempotency_key: str | None = None, **fields: Any) -> tuple[Task, bool]:
    """What every entry point calls to run a task (REST, the admin's retry, the OpenAI-compatible
    API, Socket.IO): replay an Idempotency-Key, check the model and the tools, reserve the
    budget (402 when it cannot fit), create and enqueue. Returns (task, created).

    A replay answers with the original task before anything that may have changed since (the
    model catalog, the tools, the budget) can refuse it, as the contract promises."""
    task = task_idempotent_replay(tenant=tenant, idempotency_key=idempotency_key, **fields)
    if task is not None:
        return task, False
    _backlog_check(app_id=tenant.app_ids[1])
    model_validate(tenant=tenant, model=fields.get("model"), images=has_images(fields.get("messages")))
    tools_validate_requested(tenant=tenant, names=fields.get("tools") or [])
    with budget_hold(tenant=tenant, **fields) as hold:
        task, created = task_create(
            tenant=tenant, idempotency_key=idempotency_key,
            estimated_duration_ms=selectors.estimated_duration_ms(company_id=tenant.app_ids[0]), **fields)
        hold.bind(task_id=task.id, created=created)
    return task, created


def _backlog_check(*, app_id: int) -> None:
    """QueueFull (429) when the app's max_backlog tasks already wait. Checked before the
    task exists, so concurrent requests may pass it a few over the limit."""
    limit = fair.fair_config(app_id=app_id).app_max_backlog
    if not limit:
        return
    try:
        waiting = fair.fair_backlog(app_id=app_id)
    except RedisError:
        # As the rate limits: a limit that protects capacity is not worth refusing tasks for
        # while Redis is away (the task is accepted; the reconciler sends it later).
        logger.warning("app %s: its backlog could not be checked (Redis); accepting the task", app_id, exc_info=True)
        return
    if waiting >= limit:
        retry_after = settings.MAGEAGENT["FAIR_QUEUE_FULL_RETRY_AFTER_S"]
        raise QueueFull(f"this app already has {waiting} tasks waiting (its limit is {limit}); retry later",
                        details={"waiting": waiting, "max_backlog": limit, "retry_after_s": retry_after},
                        headers={"Retry-After": str(retry_after)})


def task_route_preview(*, tenant: Tenant, prompt: str = "", model: str | None = None, tools: list[str] | None = None,
                       context: dict[str, Any] | None = None, messages: list[dict[str, Any]] | None = None,
                       system: str | None = None, max_tokens: int | None = None, **_: Any) -> RoutingDecision:
    """The decision a task with these inputs would get now (POST /route, a dry run): the
    model checked as task_submit checks it, the budget's output cap applied when one is
    active. The other task fields (stream, metadata, priority ...) do not change it."""
    model_validate(tenant=tenant, model=model, images=has_images(messages))
    company_id = tenant.company_id
    budgeted = company_id is not None and budget_context(company_id=company_id, app_id=tenant.app_id).active
    return model_select(prompt=prompt, model=model, tools=tools or [],
                        context_text=(context or {}).get("additionalContext") or "",
                        company_id=company_id, budgeted=budgeted, messages=messages, system=system,
                        max_tokens=max_tokens)


def task_create(*, tenant: Tenant, prompt: str, model: str | None = None,
                context: dict[str, Any] | None = None, tools: list[str] | None = None,
                stream: bool = True, metadata: dict[str, Any] | None = None, priority: int = 0,
                idempotency_key: str | None = None,
                estimated_duration_ms: int | None = None, **inputs: Any) -> tuple[Task, bool]:
    """Create and enqueue a task; returns (task, created). An idempotency key seen within
    IDEMPOTENCY_TTL_S returns the original task when the body matches, Conflict otherwise.
    `inputs`: the conversation and sampling fields of INPUT_DEFAULTS."""
    fields = _request_fields(prompt=prompt, model=model, context=context, tools=tools, stream=stream,
                             metadata=metadata, priority=priority, **inputs)
    digest = _request_hash(fields)
    if idempotency_key:
        existing = _task_for_idempotency_key(tenant=tenant, key=idempotency_key, digest=digest)
        if existing is not None:
            return existing, False
    company_id, app_id = tenant.app_ids
    task = Task(company_id=company_id, app_id=app_id, idempotency_key=idempotency_key,
                request_hash=digest, estimated_duration_ms=estimated_duration_ms, **fields)
    # The caller's company and app are known: no query when the task is rendered.
    task.company = Company(pk=company_id, slug=tenant.company_slug)
    task.app = App(pk=app_id, company_id=company_id, slug=tenant.app_slug)
    try:
        # One INSERT needs no transaction of its own; inside a caller's transaction a
        # savepoint keeps a duplicate idempotency key from breaking it.
        with transaction.atomic() if transaction.get_connection().in_atomic_block else nullcontext():
            task.save(force_insert=True)
        transaction.on_commit(lambda: _enqueue(task))
        transaction.on_commit(metrics.TASKS_CREATED.inc)
    except IntegrityError:
        # Two identical requests raced on the same idempotency key: the other one won.
        existing = _task_for_idempotency_key(tenant=tenant, key=idempotency_key or "", digest=digest)
        if existing is None:
            raise
        return existing, False
    return task, True


def _task_for_idempotency_key(*, tenant: Tenant, key: str, digest: str) -> Task | None:
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise ValidationFailed(f"the Idempotency-Key header is longer than {IDEMPOTENCY_KEY_MAX} characters",
                               details={"max_length": IDEMPOTENCY_KEY_MAX})
    task = Task.objects.filter(app_id=tenant.app_ids[1], idempotency_key=key).first()
    if task is None:
        return None
    window = timedelta(seconds=settings.MAGEAGENT["IDEMPOTENCY_TTL_S"])
    if task.created_at < timezone.now() - window:
        # Expired: the key may be used again for a new task.
        Task.objects.filter(pk=task.pk).update(idempotency_key=None)
        return None
    if task.request_hash != digest:
        raise Conflict("this Idempotency-Key was already used with a different request body",
                       details={"task_id": str(task.id)})
    return task


def _enqueue(task: Task) -> None:
    # Runs after the row is committed: the task is accepted whatever happens here. Raising
    # would answer 500 for a task that exists, and the client's retry would create a second
    # one. The row is the ledger: the reconciler (tasks/housekeeping.py) dispatches queued
    # rows the fair queues and the broker do not hold once Redis answers again. The log
    # begins before the task is queued, so no worker takes it before its `queued` event.
    task_id = str(task.id)
    try:
        events.append(task_id, events.encode("status", status=TaskStatus.QUEUED, attempt=task.attempts))
    except Exception:
        logger.exception("task %s: its queued event could not be logged", task_id)
    try:
        task_dispatch(task=task)
    except Exception:
        logger.exception("task %s is queued but could not be handed to the broker; "
                         "the reconciler will dispatch it", task_id)


def task_dispatch(*, task: Task, again: bool = False) -> None:
    """Queue a task for its tenant in the fair queues (tasks/fair.py) and send the broker
    whatever the fair order picks now: usually this task itself, when nothing waits.
    `again`: the reconciler found it sent and lost. Needs the row's company, app, priority,
    created_at and the inputs its cost is estimated from."""
    cost = fair.fair_cost(prompt=task.prompt, system=task.system, messages=task.messages, max_tokens=task.max_tokens)
    since_ms = int(task.created_at.timestamp() * 1000) if task.created_at else int(time.time() * 1000)
    picked = fair.fair_admit(task_id=str(task.id), company_id=task.company_id, app_id=task.app_id, cost=cost,
                             priority=task.priority, since_ms=since_ms, config=fair.fair_config(app_id=task.app_id),
                             again=again)
    _send_picked(picked, request_for=str(task.id))


def task_picked(*, task_id: str) -> None:
    """A worker took the task's message: its place in the fair window goes to the next task."""
    _send_picked(fair.fair_started(task_id=task_id))


def task_fair_release(*, task_id: str, tokens: int | None = None) -> None:
    """The task ended (or was cancelled, or deleted): it leaves the fair queues, its tenant is
    charged its actual `tokens` instead of its estimate, and what that frees is sent."""
    _send_picked(fair.fair_finished(task_id=task_id, tokens=tokens))


def tenant_fair_settings_apply(*, tenant: Company | App) -> None:
    """A company's or app's weight or limits were saved: the next pick uses them."""
    _send_picked(fair.fair_config_store(tenant=tenant))


def _fair_finished(task_id: str, tokens: int | None) -> None:
    try:
        task_fair_release(task_id=task_id, tokens=tokens)
    except Exception:
        # The reconciler prunes the in-flight ids of ended tasks.
        logger.warning("task %s ended but the fair queues could not be told now", task_id, exc_info=True)


def _send_picked(picked: fair.Picked, request_for: str = "") -> None:
    # A send that fails leaves the rest in the fair window: the reconciler queues them again
    # after FAIR_LOST_AFTER_S.
    for task_id, priority in picked:
        task_send(task_id=task_id, priority=priority, with_request=task_id == request_for)


def task_send(*, task_id: str, priority: int = 0, countdown: float | None = None, with_request: bool = False) -> None:
    """Hand a task to the broker by its Celery name (tasks/tasks.py registers it). Only the
    fair dispatch calls it: a direct send would skip the queue of every other tenant."""
    # The Redis transport serves priority 0 first; the API's scale is "higher first". The
    # queue is read per call (not once by Celery's config) so that it follows the settings.
    # The request that created (or handed back) the task goes along for the worker's log lines.
    request_id = current_request_id() if with_request else None
    send = {"args": (task_id,), "kwargs": {"request_id": request_id} if request_id else {},
            "queue": settings.CELERY_TASK_DEFAULT_QUEUE, "priority": 9 - priority, "countdown": countdown,
            "ignore_result": True}
    if not with_request:
        # Another task's pickup (or the reconciler) sends this one: the trace in context is not
        # this task's, so the worker starts a trace of its own.
        celery_app.send_task(TASK_EXECUTE_JOB, **send)
        return
    # The trace goes along in the message's headers: the worker's spans continue the request's.
    with tracing.span("mageagent.task.enqueue", kind=tracing.SpanKind.PRODUCER, mageagent__task__id=task_id,
                      messaging__system="celery", messaging__destination__name=settings.CELERY_TASK_DEFAULT_QUEUE):
        celery_app.send_task(TASK_EXECUTE_JOB, headers=tracing.enqueue_headers(), **send)


# --- transitions ----------------------------------------------------------------------------
def _transition(task_id: str, *, from_: tuple[str, ...], extra: dict[str, Any] | None = None,
                app_id: int | None = None, **values: Any) -> bool:
    """Override of the ORM's UPDATE (Django ==5.2.20; tests/tasks/test_transition_sql.py fails if it changes).

    UPDATE task SET <values> WHERE id = task_id AND status IN from_ [AND <extra> =]: True
    when it changed the row. The statement is what QuerySet.update() sends, values prepared
    by the fields as the ORM prepares them, written once per shape: the ORM compiles it again
    on every call, twice per task in the worker (BENCHMARKS.md, issue 17's A/B). `app_id`, the
    task's app when the caller knows it, goes to task_finished's receivers."""
    values["updated_at"] = timezone.now()
    where = extra or {}
    connection = connections[router.db_for_write(Task)]
    sql, set_fields, where_fields = _transition_sql(connection.alias, tuple(values), len(from_), tuple(where))
    params = [f.get_db_prep_save(values[f.name], connection) for f in set_fields]
    params += [_PK.get_db_prep_value(task_id, connection)]
    params += [_STATUS.get_db_prep_value(status, connection) for status in from_]
    params += [f.get_db_prep_value(where[f.name], connection) for f in where_fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        changed = cursor.rowcount == 1
    if changed and values.get("status") in TERMINAL:
        status = str(values["status"])

        result = values.get("result")
        tokens = result.get("tokensUsed") if isinstance(result, dict) else None

        def finished() -> None:
            metrics.TASKS_FINISHED.labels(status=status).inc()
            _fair_finished(task_id, tokens if isinstance(tokens, int) else None)
            task_finished.send_robust(sender=Task, task_id=task_id, status=status, app_id=app_id)

        transaction.on_commit(finished, using=connection.alias)
    return changed


def _column(field: Any) -> str:
    """A concrete field's column (Django's types allow none, for relations and virtual fields)."""
    return cast(str, field.column)


_PK = Task._meta.pk
_STATUS = Task._meta.get_field("status")


@cache
def _transition_sql(alias: str, set_names: tuple[str, ...], statuses: int,
                    where_names: tuple[str, ...]) -> tuple[str, list[Any], list[Any]]:
    q = connections[alias].ops.quote_name
    set_fields = [Task._meta.get_field(name) for name in set_names]
    where_fields = [Task._meta.get_field(name) for name in where_names]
    sql = (f"UPDATE {q(Task._meta.db_table)} SET {', '.join(f'{q(_column(f))} = %s' for f in set_fields)} "
           f"WHERE {q(_column(_PK))} = %s AND {q(_column(_STATUS))} IN ({', '.join(['%s'] * statuses)})"
           + "".join(f" AND {q(_column(f))} = %s" for f in where_fields))
    return sql, set_fields, where_fields


def task_start(*, task: Task, worker: str, routing: dict[str, Any] | None, steps: list[str],
               started_at: datetime | None = None) -> Task | None:
    """queued → processing for the attempt `task` was read at. None when another actor got
    there first (a duplicate delivery, a cancel); otherwise `task`, updated."""
    started = started_at or timezone.now()
    values: dict[str, Any] = {"status": TaskStatus.PROCESSING, "worker": worker, "started_at": started,
              "routing": routing, "steps": steps}
    if not _transition(str(task.id), from_=(TaskStatus.QUEUED,), extra={"attempts": task.attempts}, **values):
        return None
    for name, value in values.items():
        setattr(task, name, value)
    if task.attempts == 1 and task.created_at is not None:  # a retry's wait is its backoff, not the queue's
        metrics.TASK_QUEUE_WAIT.observe(max((started - task.created_at).total_seconds(), 0.0))
    return task


def _log_transition(task_id: str, *bodies: bytes, owner: str, close: bool = False) -> None:
    """The events of a transition that already won: the row is the truth, so Redis failing
    here does not undo it (the reconciler closes a log left open, from the row)."""
    try:
        events.append(task_id, *bodies, owner=owner, close=close)
    except RedisError:
        logger.warning("task %s: the events of its transition could not be logged now", task_id, exc_info=True)


def task_complete(*, task_id: str, attempt: int, result: dict[str, Any], steps: list[str],
                  routing: dict[str, Any] | None, owner: str = events.ANY_OWNER, app_id: int | None = None) -> bool:
    """processing → completed for `attempt`, and its log closed by `done` (written only while
    `owner` holds the log). False when another actor got there first: nothing is written."""
    if not _transition(task_id, from_=(TaskStatus.PROCESSING,), extra={"attempts": attempt}, app_id=app_id,
                       status=TaskStatus.COMPLETED, result=result, steps=steps, routing=routing,
                       completed_at=timezone.now()):
        return False
    _log_transition(task_id, done_event(status=TaskStatus.COMPLETED, result=result), owner=owner, close=True)
    return True


def task_fail(*, task_id: str, attempt: int | None, error: dict[str, Any], steps: list[str] | None = None,
              routing: dict[str, Any] | None = None, result: dict[str, Any] | None = None,
              owner: str = events.ANY_OWNER, app_id: int | None = None) -> bool:
    """queued or processing → failed, and its log closed by `done` with the error (written
    only while `owner` holds the log). False when another actor got there first."""
    extra = {"attempts": attempt} if attempt is not None else None
    values: dict[str, Any] = {"status": TaskStatus.FAILED, "error": error, "completed_at": timezone.now()}
    if steps is not None:
        values["steps"] = steps
    if routing is not None:
        values["routing"] = routing
    if result is not None:
        values["result"] = result
    if not _transition(task_id, from_=(TaskStatus.PROCESSING, TaskStatus.QUEUED), extra=extra, app_id=app_id,
                       **values):
        return False
    _log_transition(task_id, done_event(status=TaskStatus.FAILED, error=error), owner=owner, close=True)
    return True


def task_requeue(*, task_id: str, attempt: int, steps: list[str], routing: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None, owner: str = events.ANY_OWNER) -> bool:
    """processing → queued after a transient failure, `attempts` raised to the next attempt,
    and a `status` event saying so (with the error that ended this attempt). The caller
    hands it to the broker again (a Celery retry, or task_dispatch)."""
    if not _transition(task_id, from_=(TaskStatus.PROCESSING,), extra={"attempts": attempt},
                       status=TaskStatus.QUEUED, attempts=attempt + 1, steps=steps, routing=routing, worker=""):
        return False
    fields: dict[str, Any] = {"status": TaskStatus.QUEUED, "attempt": attempt + 1}
    if error is not None:
        fields["error"] = error
    _log_transition(task_id, events.encode("status", **fields), owner=owner)
    return True


def task_record_cancelled_result(*, task_id: str, result: dict[str, Any]) -> bool:
    """A cancelled task keeps its partial content; written once, by whoever closed its log."""
    return Task.objects.filter(pk=task_id, status=TaskStatus.CANCELLED, result__isnull=True).update(
        result=result, updated_at=timezone.now()) == 1


def task_cancel(*, task: Task) -> Task:
    """Cancel for whoever asks (REST, both WebSockets, Socket.IO, the admin): a queued task
    never runs and gives back the budget its enqueue reserved; a processing one is stopped by
    its worker. Cancelling a cancelled task is a no-op; a finished one is a Conflict."""
    if task.status == TaskStatus.CANCELLED:
        return task
    if task.status in TERMINAL:
        raise Conflict(f"task is already {task.status}", details={"status": task.status})
    now = timezone.now()
    if _transition(str(task.id), from_=(TaskStatus.QUEUED,), app_id=task.app_id, status=TaskStatus.CANCELLED,
                   completed_at=now):
        metrics.CANCELS.labels(from_status=TaskStatus.QUEUED).inc()
        events.append(str(task.id), events.encode("status", status=TaskStatus.CANCELLED, attempt=task.attempts),
                      done_event(status=TaskStatus.CANCELLED, result=None), close=True)
        if task.started_at is None:  # never ran: nothing spent, so its hold goes back now
            budget_release_task(task_id=task.id, company_id=task.company_id, app_id=task.app_id)
        return Task.objects.get(pk=task.pk)
    if _transition(str(task.id), from_=(TaskStatus.PROCESSING,), app_id=task.app_id, status=TaskStatus.CANCELLED,
                   completed_at=now):
        metrics.CANCELS.labels(from_status=TaskStatus.PROCESSING).inc()
        events.sync_client().publish(CANCEL_CHANNEL, str(task.id))
        if not events.wait_closed(str(task.id), settings.MAGEAGENT["CANCEL_WAIT_S"]):
            # The worker did not answer in time (dead or partitioned): close it from here.
            task_close_cancelled_log(task_id=str(task.id))
        return Task.objects.get(pk=task.pk)
    # It changed under us (started or finished): decide again on the fresh state.
    return task_cancel(task=Task.objects.get(pk=task.pk))


def task_delete(*, task: Task) -> None:
    """Delete a task (DELETE /v1/responses/{id}): one still running is cancelled first, so
    its worker stops and its budget hold goes back. Its event log expires with EVENT_TTL_S."""
    if not task.is_terminal:
        with suppress(Conflict):  # it finished meanwhile: nothing left to stop
            task_cancel(task=task)
    Task.objects.filter(pk=task.pk).delete()


def task_retry(*, task: Task) -> Task:
    """Run a failed or cancelled task again as a NEW task with the same inputs (staff action),
    checked like any new task (model, tools, budget); the old task and its log stay as they were."""
    if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise Conflict(f"only failed or cancelled tasks can be retried; this one is {task.status}",
                       details={"status": task.status})
    tenant = Tenant(company_id=task.company_id, company_slug=task.company.slug,
                    app_id=task.app_id, app_slug=task.app.slug)
    new_task, _ = task_submit(tenant=tenant, prompt=task.prompt, model=task.model, context=task.context,
                              tools=task.tools, stream=task.stream, metadata=task.metadata, priority=task.priority,
                              **{name: getattr(task, name) for name in INPUT_DEFAULTS})
    return new_task


def done_event(*, status: str, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None) -> bytes:
    payload: dict[str, Any] = {"done": True, "status": status}
    if error is not None:
        payload["error"] = error
    else:
        payload["result"] = result
    return events.encode("done", **payload)


def partial_content(raw_events: list[str]) -> str:
    """The answer so far: chunk contents after the last reset (the contract's invariant)."""
    parts: list[str] = []
    for raw in raw_events:
        _, kind = events.peek(raw)
        if kind == "reset":
            parts.clear()
        elif kind == "chunk":
            parts.append(orjson.loads(raw)["content"])
    return "".join(parts)


def task_close_cancelled(*, task_id: str, result: dict[str, Any], owner: str = events.ANY_OWNER) -> bool:
    """Close a cancelled task's log with its partial answer and keep that answer on the row;
    the attempt that holds the log (`owner`) does it, or whoever fenced it. False when the
    log was already closed or is held by another attempt, or Redis failed (then the
    reconciler closes it from the row)."""
    # The row first: a client that reads the task as soon as it sees `done` finds the partial
    # answer there (written once; a closer that comes second keeps the first one's).
    task_record_cancelled_result(task_id=task_id, result=result)
    try:
        return events.append(task_id, done_event(status=TaskStatus.CANCELLED, result=result), owner=owner,
                             close=True) > 0
    except RedisError:
        logger.warning("task %s: its cancelled log could not be closed now", task_id, exc_info=True)
        return False


def task_close_cancelled_log(*, task_id: str) -> None:
    """Seal a cancelled task's log from outside the worker, keeping the partial content."""
    events.claim(task_id, "closing")  # fences the (possibly alive) old attempt
    content = partial_content(events.read_after(task_id, 0) or [])
    task = Task.objects.get(pk=task_id)
    result = {"content": content, "model": (task.routing or {}).get("model"), "tokensUsed": None,
              "finishReason": "cancelled", "usage": None, "cost_usd": None}
    task_close_cancelled(task_id=task_id, result=result, owner="closing")


def task_close_log(*, task: Task) -> None:
    """Close the log of a task that finished while its log was left open (a worker that died
    between its transition and its `done`): `done` from what the row holds."""
    if task.status == TaskStatus.CANCELLED:
        task_close_cancelled_log(task_id=str(task.id))
    elif task.status == TaskStatus.FAILED:
        events.append(str(task.id), done_event(status=task.status, error=task.error), close=True)
    elif task.status == TaskStatus.COMPLETED:
        events.append(str(task.id), done_event(status=task.status, result=task.result), close=True)
