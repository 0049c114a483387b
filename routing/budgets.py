"""Budgets that concurrent tasks cannot overrun.

Every budgeted scope (a company or an app, per UTC day or month) has a Redis hash with
what was spent and what is reserved, in nano-USD. Before each provider call the caller
reserves the call's worst-case cost (prompt tokens plus the capped answer) in one Lua
script that checks every scope and takes from all of them or from none; after the call
it settles to the actual cost. A reservation names its scopes and expires (swept by the
next reservation), so a worker that dies cannot hold budget forever. POST /tasks takes
the first call's reservation at enqueue (402 budget_exceeded when it does not fit) and
hands it to the task; the worker adopts it. The database's Spend rows are the ledger a
missing Redis hash is rebuilt from.
"""

from __future__ import annotations

import calendar
import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from django.conf import settings
from django.db import connections, router, transaction

from mageagent import metrics
from mageagent.errors import BudgetExceeded
from mageagent.redis import async_script, sync_client, sync_script

from .models import BudgetPeriod, Spend
from .selectors import budgets_cache, budgets_for, spend_total
from .services import model_select

logger = logging.getLogger(__name__)
NANO = 1_000_000_000

_RELEASE = """
local function release(ns, id)
  local rk = ns .. ':rsv:' .. id
  local held = tonumber(redis.call('HGET', rk, 'amount') or '0')
  local scopes = redis.call('HGET', rk, 'scopes')
  if scopes and held > 0 then
    for key in string.gmatch(scopes, '[^|]+') do
      if redis.call('EXISTS', key) == 1 then redis.call('HINCRBY', key, 'reserved', -held) end
    end
  end
  redis.call('DEL', rk)
  redis.call('ZREM', ns .. ':rsv:exp', id)
end
"""
# ARGV: ns, rid, amount, now, ttl, n, then per scope: key, limit, initial spent, expire-at.
_RESERVE = _RELEASE + """
local ns, rid = ARGV[1], ARGV[2]
local amount, now, ttl, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
for _, old in ipairs(redis.call('ZRANGEBYSCORE', ns .. ':rsv:exp', '-inf', now, 'LIMIT', 0, 100)) do
  release(ns, old)
end
local keys = {}
for i = 0, n - 1 do keys[#keys + 1] = ARGV[7 + 4 * i] end
local joined = table.concat(keys, '|')
local rk = ns .. ':rsv:' .. rid
local held = 0
if redis.call('EXISTS', rk) == 1 then
  if redis.call('HGET', rk, 'scopes') == joined then
    held = tonumber(redis.call('HGET', rk, 'amount'))
  else
    release(ns, rid)
  end
end
local extra = amount - held
if extra > 0 then
  for i = 0, n - 1 do
    local key, limit = ARGV[7 + 4 * i], tonumber(ARGV[8 + 4 * i])
    redis.call('HSETNX', key, 'spent', ARGV[9 + 4 * i])
    redis.call('EXPIREAT', key, ARGV[10 + 4 * i])
    local spent = tonumber(redis.call('HGET', key, 'spent'))
    local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
    if spent + reserved + extra > limit then return {0, i, spent, reserved} end
  end
  for i = 0, n - 1 do redis.call('HINCRBY', ARGV[7 + 4 * i], 'reserved', extra) end
  held = amount
end
redis.call('HSET', rk, 'amount', held, 'scopes', joined)
redis.call('EXPIRE', rk, ttl + 3600)
redis.call('ZADD', ns .. ':rsv:exp', now + ttl, rid)
return {1, held}
"""
# ARGV: ns, rid, actual, n, then per scope: key, initial spent, expire-at.
_SETTLE = _RELEASE + """
local ns, rid, actual, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
release(ns, rid)
if actual > 0 then
  for i = 0, n - 1 do
    local key = ARGV[5 + 3 * i]
    redis.call('HSETNX', key, 'spent', ARGV[6 + 3 * i])
    redis.call('HINCRBY', key, 'spent', actual)
    redis.call('EXPIREAT', key, ARGV[7 + 3 * i])
  end
end
return 1
"""
# ARGV: ns, from-id, to-id.
_BIND = """
local ns = ARGV[1]
local src, dst = ns .. ':rsv:' .. ARGV[2], ns .. ':rsv:' .. ARGV[3]
if redis.call('EXISTS', src) == 0 then return 0 end
redis.call('RENAME', src, dst)
local score = redis.call('ZSCORE', ns .. ':rsv:exp', ARGV[2])
redis.call('ZREM', ns .. ':rsv:exp', ARGV[2])
if score then redis.call('ZADD', ns .. ':rsv:exp', score, ARGV[3]) end
return 1
"""


@dataclass(frozen=True)
class BudgetScope:
    key: str
    limit: int  # nano-USD
    initial: int  # nano-USD spent in the period according to the database
    expire_at: int
    label: dict[str, Any]


@dataclass
class BudgetContext:
    """The budgets a company's app is under right now (empty: not budgeted)."""

    scopes: list[BudgetScope] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.scopes)


def nano(usd: float | Decimal) -> int:
    return math.ceil(float(usd) * NANO)


def _ns() -> str:
    return settings.MAGEAGENT_ROUTING["REDIS_NAMESPACE"]


def budget_context(*, company_id: int, app_id: int | None, today: date | None = None) -> BudgetContext:
    today = today or datetime.now(UTC).date()
    month_start = today.replace(day=1)
    month_end = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    scopes = []
    for budget in budgets_for(company_id=company_id, app_id=app_id):
        daily = budget.period == BudgetPeriod.DAY
        since, until = (today, today) if daily else (month_start, month_end)
        owner = f"a{budget.app_id}" if budget.app_id else f"c{company_id}"
        spent = spend_total(company_id=company_id, app_id=budget.app_id, since=since)
        expire = datetime.combine(until + timedelta(days=2), datetime.min.time(), tzinfo=UTC)
        scopes.append(BudgetScope(
            key=f"{_ns()}:budget:{owner}:{budget.period}:{since.isoformat()}", limit=int(budget.limit_usd * NANO),
            initial=nano(spent), expire_at=int(expire.timestamp()),
            label={"scope": "app" if budget.app_id else "company", "period": budget.period,
                   "since": since.isoformat(), "limit_usd": float(budget.limit_usd)}))
    return BudgetContext(scopes=scopes)


def _reserve_args(ctx: BudgetContext, rid: str, amount: int) -> list[Any]:
    args: list[Any] = [_ns(), rid, amount, time.time(), settings.MAGEAGENT_ROUTING["RESERVATION_TTL_S"],
                       len(ctx.scopes)]
    for s in ctx.scopes:
        args += [s.key, s.limit, s.initial, s.expire_at]
    return args


def _settle_args(ctx: BudgetContext, rid: str, actual: int) -> list[Any]:
    args: list[Any] = [_ns(), rid, actual, len(ctx.scopes)]
    for s in ctx.scopes:
        args += [s.key, s.initial, s.expire_at]
    return args


def _refusal(ctx: BudgetContext, reply: list[Any], amount: int) -> BudgetExceeded:
    scope = ctx.scopes[int(reply[1])]
    metrics.BUDGET_REFUSALS.labels(scope=str(scope.label["scope"])).inc()
    details = {**scope.label, "spent_usd": int(reply[2]) / NANO, "reserved_usd": int(reply[3]) / NANO,
               "estimated_cost_usd": amount / NANO}
    return BudgetExceeded(f"the {scope.label['scope']} {scope.label['period']}ly budget of "
                          f"${scope.label['limit_usd']} would be exceeded", details=details)


def budget_reserve(ctx: BudgetContext, *, rid: str, amount_usd: float) -> None:
    """Raise BudgetExceeded unless every scope has room for `amount_usd` more."""
    if not ctx.active:
        return
    amount = nano(amount_usd)
    reply = sync_script(_RESERVE)(args=_reserve_args(ctx, rid, amount))
    if int(reply[0]) != 1:
        raise _refusal(ctx, reply, amount)


def budget_settle(ctx: BudgetContext, *, rid: str, actual_usd: float) -> None:
    if ctx.active:
        sync_script(_SETTLE)(args=_settle_args(ctx, rid, nano(actual_usd)))


async def abudget_reserve(ctx: BudgetContext, *, rid: str, amount_usd: float) -> None:
    if not ctx.active:
        return
    amount = nano(amount_usd)
    reply = await async_script(_RESERVE)(args=_reserve_args(ctx, rid, amount))
    if int(reply[0]) != 1:
        raise _refusal(ctx, reply, amount)


async def abudget_settle(ctx: BudgetContext, *, rid: str, actual_usd: float) -> None:
    if ctx.active:
        await async_script(_SETTLE)(args=_settle_args(ctx, rid, nano(actual_usd)))


def task_reservation_id(task_id: Any) -> str:
    return f"task:{task_id}"


def budget_release_task(*, task_id: Any, company_id: int, app_id: int | None) -> None:
    """A queued task was cancelled: give back what its enqueue reserved."""
    ctx = budget_context(company_id=company_id, app_id=app_id)
    budget_settle(ctx, rid=task_reservation_id(task_id), actual_usd=0.0)


# --- enqueue -------------------------------------------------------------------------------
class BudgetHold:
    def __init__(self, ctx: BudgetContext, estimate: dict[str, Any] | None) -> None:
        self.ctx, self.estimate = ctx, estimate
        self.rid = f"hold:{uuid.uuid4()}"
        self.bound = False

    def bind(self, *, task_id: Any, created: bool) -> None:
        """Hand the reservation to the task (before its enqueue commits), or give it
        back when the request only replayed an existing task."""
        if not self.ctx.active:
            return
        if created:
            sync_script(_BIND)(args=[_ns(), self.rid, task_reservation_id(task_id)])
            self.bound = True

    def release(self) -> None:
        if self.ctx.active and not self.bound:
            budget_settle(self.ctx, rid=self.rid, actual_usd=0.0)


@contextmanager
def budget_hold(*, tenant: Any, prompt: str, model: str | None, tools: list[str] | None = None,
                context: dict[str, Any] | None = None, messages: list[dict[str, Any]] | None = None,
                system: str | None = None, max_tokens: int | None = None,
                client_tools: list[dict[str, Any]] | None = None, **_: Any) -> Iterator[BudgetHold]:
    """Reserve a new task's first call, or raise BudgetExceeded (402). Create the task
    inside the block and `bind` it: the block is one transaction, so the task is only
    enqueued (on commit) once it owns the reservation."""
    ctx = budget_context(company_id=tenant.company_id, app_id=tenant.app_id)
    if not ctx.active:
        yield BudgetHold(ctx, None)
        return
    context_text = (context or {}).get("additionalContext") or ""
    decision = model_select(prompt=prompt, model=model, tools=tools or [], context_text=context_text,
                            company_id=tenant.company_id, budgeted=True, messages=messages, system=system,
                            max_tokens=max_tokens, client_tools=client_tools)
    hold = BudgetHold(ctx, decision.as_dict())
    budget_reserve(ctx, rid=hold.rid, amount_usd=decision.estimated_cost_usd)
    try:
        with transaction.atomic():
            yield hold
    finally:
        hold.release()


# --- budget changes ------------------------------------------------------------------------
def budgets_changed(**_: Any) -> None:
    """A Budget was saved or deleted (signal receiver, routing/apps.py): this process
    forgets its cached budgets now, every process once the change is committed."""
    budgets_cache.changed()


# --- the ledger ----------------------------------------------------------------------------
def spend_record(*, company_id: int, app_id: int, cost_usd: float, prompt_tokens: int, completion_tokens: int,
                 calls: int, tasks: int = 1, day: date | None = None, model: str = "") -> None:
    """Override of the ORM's upsert (Django ==5.2.20; tests/routing/test_budgets.py's spend tests fail if it changes).

    Add one attempt's use of one model to the app's row of the day: one INSERT ... ON
    CONFLICT DO UPDATE (PostgreSQL and SQLite), atomic under concurrent workers. Every
    attempt of every task books here; the ORM's UPDATE-or-INSERT with F() expressions compiles two statements on
    every call (BENCHMARKS.md, issue 17's A/B)."""
    values = {"company_id": company_id, "app_id": app_id, "day": day or datetime.now(UTC).date(), "model": model,
              "cost_usd": Decimal(str(round(cost_usd, 9))), "prompt_tokens": prompt_tokens,
              "completion_tokens": completion_tokens, "calls": calls, "tasks": tasks,
              "updated_at": datetime.now(UTC)}
    sql, fields = _spend_upsert_sql()
    connection = connections[router.db_for_write(Spend)]
    params = [field.get_db_prep_save(values[field.attname], connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@cache
def _spend_upsert_sql() -> tuple[str, list[Any]]:
    meta = Spend._meta
    names = ("company", "app", "day", "model", "cost_usd", "prompt_tokens", "completion_tokens", "calls", "tasks",
             "updated_at")
    fields: list[Any] = [meta.get_field(name) for name in names]
    q = connections[router.db_for_write(Spend)].ops.quote_name
    table, cols = q(meta.db_table), [q(f.column) for f in fields]
    added = [f"{c} = {table}.{c} + EXCLUDED.{c}" for c in cols[4:9]]
    sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
           f"ON CONFLICT ({', '.join(cols[:4])}) DO UPDATE SET {', '.join(added)}, "
           f"{cols[9]} = EXCLUDED.{cols[9]}")
    return sql, fields


def budget_usage(ctx: BudgetContext) -> list[dict[str, Any]]:
    """Spent and reserved per scope as Redis has them (for the admin)."""
    client = sync_client()
    out = []
    for s in ctx.scopes:
        spent, reserved = client.hmget(s.key, "spent", "reserved")
        out.append({**s.label, "spent_usd": int(spent or s.initial) / NANO, "reserved_usd": int(reserved or 0) / NANO})
    return out
