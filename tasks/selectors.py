from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from functools import cache
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, router
from django.db.models import Count, F, QuerySet, Sum, TextField, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce, TruncDate

from mageagent.errors import NotFound
from mageagent.queries import CompiledSelect
from mageagent.tenancy.auth import Tenant
from mageagent.tenancy.models import App
from routing.models import Spend

from . import fair
from .models import Task, TaskStatus
from .runtime.heartbeat import live_workers


def task_queryset(*, tenant: Tenant) -> QuerySet[Task]:
    qs = Task.objects.select_related("company", "app")
    return qs if tenant.is_staff else qs.filter(company_id=tenant.app_ids[0])


_PK = Task._meta.pk
_COMPANY = Task._meta.get_field("company")
_NO_ID = uuid.UUID(int=0)


@cache
def _task_select(alias: str, *, related: bool, company: bool) -> CompiledSelect[Task]:
    """SELECT a task by id [AND company_id =] [joined to its company and app], compiled once
    per shape (mageagent/queries.py): the worker and every follower fetch a task this way."""
    qs = Task.objects.using(alias).order_by()
    if related:
        qs = qs.select_related("company", "app")
    connection = connections[alias]
    expected = []
    if company:
        qs = qs.filter(company_id=0)
        expected.append(_COMPANY.get_db_prep_value(0, connection))
    expected.append(_PK.get_db_prep_value(_NO_ID, connection))
    return CompiledSelect(qs.filter(pk=_NO_ID), expected)


def task_fetch(task_id: Any, *, company_id: int | None = None, related: bool = False) -> Task | None:
    """The task with this id (of this company, when given), or None. `related` joins its
    company and app (what rendering it reads)."""
    alias = router.db_for_read(Task)
    connection = connections[alias]
    # In _task_select's order: company_id, then id.
    params = [] if company_id is None else [_COMPANY.get_db_prep_value(company_id, connection)]
    params.append(_PK.get_db_prep_value(task_id, connection))
    rows = _task_select(alias, related=related, company=company_id is not None).all(params)
    return rows[0] if rows else None


def task_get(*, tenant: Tenant, task_id: Any) -> Task:
    """The caller's task, or NotFound: another company's task does not exist for them."""
    try:
        task = task_fetch(task_id, company_id=None if tenant.is_staff else tenant.app_ids[0], related=True)
    except (ValueError, TypeError, ValidationError):  # a malformed id: UUIDField.to_python refuses it
        task = None
    if task is None:
        raise NotFound("task not found")
    return task


def task_list(*, tenant: Tenant, status: str | None = None, model: str | None = None,
              created_after: dt.datetime | None = None,
              created_before: dt.datetime | None = None) -> QuerySet[Task]:
    qs = task_queryset(tenant=tenant)
    if status:
        qs = qs.filter(status=status)
    if model:
        qs = qs.filter(model=model)
    if created_after:
        qs = qs.filter(created_at__gt=created_after)
    if created_before:
        qs = qs.filter(created_at__lt=created_before)
    return qs


def _durations_ms(qs: QuerySet[Task], limit: int = 1000) -> list[float]:
    rows = (qs.filter(status=TaskStatus.COMPLETED, started_at__isnull=False)
            .order_by("-completed_at").annotate(d=F("completed_at") - F("started_at"))
            .values_list("d", flat=True)[:limit])
    return sorted(d.total_seconds() * 1000 for d in rows if d is not None)


def queue_metrics(*, company_id: int | None) -> dict[str, Any]:
    qs = Task.objects.all() if company_id is None else Task.objects.filter(company_id=company_id)
    counts = dict(qs.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    durations = _durations_ms(qs)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    throughput = qs.filter(completed_at__gte=since, status=TaskStatus.COMPLETED).count()
    delayed = qs.filter(status=TaskStatus.QUEUED, attempts__gt=1).count()  # waiting out a retry backoff
    return {
        "waiting": counts.get(TaskStatus.QUEUED, 0) - delayed,
        "active": counts.get(TaskStatus.PROCESSING, 0),
        "completed": counts.get(TaskStatus.COMPLETED, 0),
        "failed": counts.get(TaskStatus.FAILED, 0),
        "cancelled": counts.get(TaskStatus.CANCELLED, 0),
        "delayed": delayed,
        "avg_processing_ms": round(sum(durations) / len(durations), 1) if durations else None,
        "p95_processing_ms": round(durations[math.ceil(0.95 * len(durations)) - 1], 1) if durations else None,
        "throughput_per_min": throughput,
        "workers": len(live_workers()),
        **({"fair": fair_share(company_ids=[company_id])[company_id]} if company_id is not None else {}),
    }


def fair_share(*, company_ids: list[int] | None) -> dict[int, dict[str, Any]]:
    """Per company (all when None): its fair scheduling weight, tasks waiting in its fair
    queues, tasks in flight (sent to a worker or running) and its share of all in flight;
    `apps` the same per app (by slug)."""
    apps = App.objects.all() if company_ids is None else App.objects.filter(company_id__in=company_ids)
    rows = list(apps.values_list("id", "slug", "company_id").order_by("slug"))
    stats = fair.fair_tenants({aid: cid for aid, _, cid in rows})
    out: dict[int, dict[str, Any]] = {}
    for cid in company_ids if company_ids is not None else stats["companies"]:
        out[cid] = {**stats["companies"].get(cid, {"waiting": 0, "running": 0, "share": 0.0, "weight": 1}),
                    "apps": []}
    for aid, slug, cid in rows:
        out[cid]["apps"].append({"app_id": slug, **stats["apps"][aid]})
    return out


_estimates: dict[int, tuple[float, int]] = {}


def estimated_duration_ms(*, company_id: int) -> int:
    """Recent average created → completed time of the company's tasks; 3.5 s when unknown.
    Cached per process for a minute: it is on the enqueue path."""
    now = time.monotonic()
    hit = _estimates.get(company_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    rows = (Task.objects.filter(company_id=company_id, status=TaskStatus.COMPLETED)
            .order_by("-completed_at").values_list("created_at", "completed_at")[:200])
    spans = [(done - created).total_seconds() * 1000 for created, done in rows if done]
    value = int(sum(spans) / len(spans)) if spans else 3500
    _estimates[company_id] = (now + 60, value)
    return value


# --- usage (GET /usage) ------------------------------------------------------------------------
USAGE_GROUPS = ("day", "app", "model")
_LEDGER_KEYS = {"day": "day", "app": "app__slug", "model": "model"}


def _task_key(group_by: str) -> Any:
    if group_by == "day":
        return TruncDate("created_at", tzinfo=dt.UTC)
    if group_by == "app":
        return F("app__slug")
    # The model that served the task (after fallbacks), else the one routed to, else the one asked for.
    return Coalesce(KeyTextTransform("model_used", "routing"), KeyTextTransform("model", "routing"), "model",
                    Value(""), output_field=TextField())


def usage_summary(*, company_id: int | None, start: dt.date, end: dt.date, group_by: str) -> list[dict[str, Any]]:
    """A company's use from `start` to `end` (UTC days, both included), one row per day, app
    or model (every company's for None: a staff session). Tokens, cost and calls come from the
    spend ledger (routing.models.Spend), which is never pruned; the counts by status come from
    the tasks still kept (retention prunes finished ones)."""
    scope = {} if company_id is None else {"company_id": company_id}
    ledger = (Spend.objects.filter(day__gte=start, day__lte=end, **scope)
              .values(key=F(_LEDGER_KEYS[group_by]))
              .annotate(prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"),
                        cost_usd=Sum("cost_usd"), calls=Sum("calls"), tasks_started=Sum("tasks")))
    since = dt.datetime.combine(start, dt.time(), dt.UTC)
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    statuses = (Task.objects.filter(created_at__gte=since, created_at__lt=until, **scope)
                .values("status", key=_task_key(group_by)).annotate(n=Count("id")))
    rows: dict[Any, dict[str, Any]] = {}

    def row(key: Any) -> dict[str, Any]:
        return rows.setdefault(key, {group_by: key.isoformat() if isinstance(key, dt.date) else key,
                                     "tasks": dict.fromkeys(TaskStatus.values, 0), "tasks_started": 0,
                                     "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "calls": 0})

    for spent in ledger:
        r = row(spent["key"])
        for name in ("prompt_tokens", "completion_tokens", "calls", "tasks_started"):
            r[name] += int(spent[name] or 0)
        r["cost_usd"] = round(r["cost_usd"] + float(spent["cost_usd"] or 0), 9)
    for counted in statuses:
        row(counted["key"])["tasks"][counted["status"]] += counted["n"]
    return [rows[k] for k in sorted(rows, key=str)]
