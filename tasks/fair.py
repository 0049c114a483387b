"""Fair scheduling: which waiting task a free worker slot goes to (README, "Fair scheduling").

Tasks wait in Redis, one queue per app, and reach the broker only through `pump`: while
fewer than FAIR_WINDOW tasks sit in the broker unstarted, it picks the company with the
lowest virtual time, then that company's app with the lowest virtual time, then that app's
first task (priority order with aging), and charges the company and the app the task's
expected tokens divided by their weights (start-time fair queueing on two levels). A task's
actual tokens are charged when it ends. A task without max_tokens is expected to answer at
the length its app's tasks have answered lately (learned as they end; FAIR_DEFAULT_OUTPUT_TOKENS
until then), so a tenant of short answers is not charged as if each were long while it runs.
Every change is one Lua script, so many web and worker processes pump at once without picking
a task twice.

Keys live under the deployment's queue name (test runs sharing a Redis stay apart):
  c           ZSET  companies with waiting tasks, by virtual time
  a:<cid>     ZSET  the company's apps with waiting tasks, by virtual time
  q:<aid>     ZSET  the app's waiting task ids, by enqueue ms - priority * aging
  m           HASH  waiting id -> "cid aid cost priority prompt"
  r           HASH  in-flight id (sent until it ends) -> "cid aid cost prompt"
  ans         HASH  app id -> its tasks' answer length, learned from the ended ones (tokens)
  win         ZSET  ids sent to the broker and not yet taken by a worker, by send ms
  wn          HASH  company id -> how many of its tasks are in `win`
  if:c:<cid>, if:a:<aid>  SET  in-flight ids per company and app (their max_in_flight)
  vt          HASH  c:<cid>, a:<aid>: virtual times; V, V:<cid>: the last pick's start times
  cfg         HASH  wc:/lc:<cid>, wa:/la:<aid>: weights and in-flight limits
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings

from mageagent.redis import sync_client, sync_script
from mageagent.tenancy.models import App, Company

# An idle tenant starts again at the current virtual time (max of its own and the last
# pick's), so time spent idle banks no credit against the tenants that kept working.
_SCRIPT = """
local P, now, op = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local wmin, wmax = string.match(ARGV[3], '(%d+):(%d+)')

local function num(v, default) return tonumber(v) or default end
local function cfg(field, default) return num(redis.call('HGET', P .. 'cfg', field), default) end
local function weight(field) return math.max(cfg(field, 1), 1) end
local function words(s) local t = {} for w in string.gmatch(s, '%S+') do t[#t + 1] = w end return t end

local function unqueue(cid, aid, id)
  redis.call('ZREM', P .. 'q:' .. aid, id)
  if redis.call('ZCARD', P .. 'q:' .. aid) == 0 then
    redis.call('ZREM', P .. 'a:' .. cid, aid)
    if redis.call('ZCARD', P .. 'a:' .. cid) == 0 then redis.call('ZREM', P .. 'c', cid) end
  end
end

local function drop_waiting(id)
  local m = redis.call('HGET', P .. 'm', id)
  if not m then return end
  local t = words(m)
  redis.call('HDEL', P .. 'm', id)
  unqueue(t[1], t[2], id)
end

local function drop_in_flight(id)
  local r = redis.call('HGET', P .. 'r', id)
  if not r then return nil end
  local t = words(r)
  redis.call('HDEL', P .. 'r', id)
  redis.call('SREM', P .. 'if:c:' .. t[1], id)
  redis.call('SREM', P .. 'if:a:' .. t[2], id)
  return t
end

local function leave_window(id)
  if redis.call('ZREM', P .. 'win', id) == 0 then return end
  local r = redis.call('HGET', P .. 'r', id)
  if r and tonumber(redis.call('HINCRBY', P .. 'wn', words(r)[1], -1)) <= 0 then
    redis.call('HDEL', P .. 'wn', words(r)[1])
  end
end

local function under(limit_field, set_key)
  local limit = cfg(limit_field, 0)
  return limit <= 0 or redis.call('SCARD', set_key) < limit
end

local function pick()
  for _, cid in ipairs(redis.call('ZRANGE', P .. 'c', 0, -1)) do
    if under('lc:' .. cid, P .. 'if:c:' .. cid) then
      for _, aid in ipairs(redis.call('ZRANGE', P .. 'a:' .. cid, 0, -1)) do
        if under('la:' .. aid, P .. 'if:a:' .. aid) then return cid, aid end
      end
    end
  end
  return nil, nil
end

local function charge(cid, aid, amount)
  local vc = num(redis.call('HGET', P .. 'vt', 'c:' .. cid), 0) + amount / weight('wc:' .. cid)
  local va = num(redis.call('HGET', P .. 'vt', 'a:' .. aid), 0) + amount / weight('wa:' .. aid)
  redis.call('HSET', P .. 'vt', 'c:' .. cid, vc, 'a:' .. aid, va)
  redis.call('ZADD', P .. 'c', 'XX', vc, cid)
  redis.call('ZADD', P .. 'a:' .. cid, 'XX', va, aid)
end

local function send(cid, aid, id, t, out)
  redis.call('HSET', P .. 'vt', 'V', redis.call('ZSCORE', P .. 'c', cid),
             'V:' .. cid, redis.call('ZSCORE', P .. 'a:' .. cid, aid))
  charge(cid, aid, tonumber(t[3]))
  redis.call('HDEL', P .. 'm', id)
  unqueue(cid, aid, id)
  -- A company holding fewer of the window's tasks than the other companies together: its
  -- task goes to the head of the broker's queue (the top priority), not behind theirs
  -- (FIFO), so a newcomer's tasks start at the next pickups however large the window.
  local own = tonumber(redis.call('HINCRBY', P .. 'wn', cid, 1)) - 1
  local priority = t[4]
  if own < redis.call('ZCARD', P .. 'win') - own then priority = '9' end
  redis.call('ZADD', P .. 'win', now, id)
  redis.call('HSET', P .. 'r', id, cid .. ' ' .. aid .. ' ' .. t[3] .. ' ' .. (t[5] or ''))
  redis.call('SADD', P .. 'if:c:' .. cid, id)
  redis.call('SADD', P .. 'if:a:' .. aid, id)
  out[#out + 1] = id
  out[#out + 1] = priority
end

-- The window follows the load: a quarter of the tasks in flight, within [min, max]. Large
-- enough that the workers' pickups never wait for a send, small enough that the fair order
-- decides what starts next rather than a backlog already in the broker.
local function window()
  local w = math.floor(redis.call('HLEN', P .. 'r') / 4)
  return math.max(tonumber(wmin), math.min(tonumber(wmax), w))
end

local function pump()
  local out = {}
  local limit = window()
  while redis.call('ZCARD', P .. 'win') < limit do
    local cid, aid = pick()
    if not cid then break end
    local id = redis.call('ZRANGE', P .. 'q:' .. aid, 0, 0)[1]
    local meta = redis.call('HGET', P .. 'm', id)
    if meta then send(cid, aid, id, words(meta), out)
    else unqueue(cid, aid, id) end  -- never expected: an entry without its record is not sent
  end
  return out
end

local function activate(zkey, member, vt_field, clock_field)
  if redis.call('ZSCORE', zkey, member) then return end
  local own = num(redis.call('HGET', P .. 'vt', vt_field), 0)
  local clock = num(redis.call('HGET', P .. 'vt', clock_field), 0)
  local vt = math.max(own, clock)
  redis.call('HSET', P .. 'vt', vt_field, vt)
  redis.call('ZADD', zkey, vt, member)
end

if op == 'admit' then
  local id, cid, aid, cost, prio, score = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
  -- The tenant's settings as the database had them a moment ago: kept only where Redis
  -- has none (an admin's save writes them directly, and wins).
  redis.call('HSETNX', P .. 'cfg', 'wc:' .. cid, ARGV[11])
  redis.call('HSETNX', P .. 'cfg', 'lc:' .. cid, ARGV[12])
  redis.call('HSETNX', P .. 'cfg', 'wa:' .. aid, ARGV[13])
  redis.call('HSETNX', P .. 'cfg', 'la:' .. aid, ARGV[14])
  if ARGV[15] == '1' then leave_window(id) end
  local prompt = ARGV[16]
  if ARGV[17] == '1' then
    local learned = tonumber(redis.call('HGET', P .. 'ans', aid))
    if learned then cost = tonumber(prompt) + math.ceil(learned) end
  end
  -- Already waiting, or sent and not yet taken: admitting it again would send it twice.
  if redis.call('HEXISTS', P .. 'm', id) == 0 and not redis.call('ZSCORE', P .. 'win', id) then
    drop_in_flight(id)  -- handed back: it waits again
    activate(P .. 'c', cid, 'c:' .. cid, 'V')
    activate(P .. 'a:' .. cid, aid, 'a:' .. aid, 'V:' .. cid)
    redis.call('HSET', P .. 'm', id, cid .. ' ' .. aid .. ' ' .. cost .. ' ' .. prio .. ' ' .. prompt)
    redis.call('ZADD', P .. 'q:' .. aid, score, id)
  end
elseif op == 'started' then
  leave_window(ARGV[5])
elseif op == 'finished' then
  local id, actual = ARGV[5], tonumber(ARGV[6])
  drop_waiting(id)
  leave_window(id)
  local t = drop_in_flight(id)
  if t and actual >= 0 then
    charge(t[1], t[2], actual - tonumber(t[3]))
    local prompt = tonumber(t[4])  -- nil in a record written before answers were learned
    if prompt then
      -- The app's answer length, a moving average weighing the latest task a fifth.
      local answer = math.max(actual - prompt, 0)
      local learned = tonumber(redis.call('HGET', P .. 'ans', t[2]))
      redis.call('HSET', P .. 'ans', t[2], learned and (learned * 0.8 + answer * 0.2) or answer)
    end
  end
elseif op == 'config' then
  redis.call('HSET', P .. 'cfg', ARGV[5], ARGV[6], ARGV[7], ARGV[8])
end
return pump()
"""


@dataclass(frozen=True)
class FairConfig:
    company_weight: int = 1
    company_max_in_flight: int = 0
    app_weight: int = 1
    app_max_in_flight: int = 0
    app_max_backlog: int = 0


Picked = list[tuple[str, int]]  # (task id, priority) to send to the broker, in order


def prefix() -> str:
    return f"ma:fair:{settings.CELERY_TASK_DEFAULT_QUEUE}:"


def _run(op: str, *args: Any) -> Picked:
    cfg = settings.MAGEAGENT
    window = f"{min(cfg['FAIR_WINDOW_MIN'], cfg['FAIR_WINDOW'])}:{cfg['FAIR_WINDOW']}"
    reply = sync_script(_SCRIPT)(args=[prefix(), int(time.time() * 1000), window, op, *args])
    return [(_text(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class FairCost:
    """A task's expected tokens: its prompt's, and its answer's (its max_tokens when set)."""
    prompt: int
    answer: int
    answer_capped: bool  # the answer is the task's max_tokens; else a guess the app's history replaces


def fair_cost(*, prompt: str, system: str | None, messages: list[dict[str, Any]] | None,
              max_tokens: int | None) -> FairCost:
    """A task's expected tokens, cheaply: ~4 characters a prompt token (what routing's
    estimate starts from, without its tokenizer) plus the answer's cap or a typical length."""
    chars = len(prompt) + len(system or "") + sum(len(str(m.get("content") or "")) for m in messages or ())
    return FairCost(chars // 4, max_tokens or settings.MAGEAGENT["FAIR_DEFAULT_OUTPUT_TOKENS"], bool(max_tokens))


def fair_admit(*, task_id: str, company_id: int, app_id: int, cost: FairCost, priority: int, since_ms: int,
               config: FairConfig, again: bool = False) -> Picked:
    """Queue a task for its tenant and pump. `again`: it was sent and lost (the reconciler),
    so its place in the window is given up first. A guessed answer length gives way to the
    one the app's ended tasks taught."""
    score = since_ms - priority * settings.MAGEAGENT["FAIR_PRIORITY_AGING_MS"]
    return _run("admit", task_id, company_id, app_id, cost.prompt + cost.answer, priority, score,
                config.company_weight, config.company_max_in_flight, config.app_weight, config.app_max_in_flight,
                int(again), cost.prompt, int(not cost.answer_capped))


def fair_started(*, task_id: str) -> Picked:
    """A worker took the task: its slot in the window frees."""
    return _run("started", task_id)


def fair_finished(*, task_id: str, tokens: int | None) -> Picked:
    """The task ended (or was cancelled while waiting): its tenant is charged the difference
    between its actual `tokens` and its estimate (None: the estimate stands)."""
    return _run("finished", task_id, -1 if tokens is None else tokens)


def fair_pump() -> Picked:
    return _run("pump")


def fair_config_store(*, tenant: Company | App) -> Picked:
    """A saved weight or limit, for the next pick (a raised limit may let a task go now)."""
    _configs.clear()
    if isinstance(tenant, Company):
        return _run("config", f"wc:{tenant.pk}", tenant.fair_weight, f"lc:{tenant.pk}", tenant.max_in_flight)
    return _run("config", f"wa:{tenant.pk}", tenant.fair_weight, f"la:{tenant.pk}", tenant.max_in_flight)


_configs: dict[int, tuple[float, FairConfig]] = {}


def fair_config(*, app_id: int) -> FairConfig:
    """The app's and its company's weights and limits, cached per process for
    FAIR_CONFIG_CACHE_S (they are on every task's enqueue)."""
    now = time.monotonic()
    hit = _configs.get(app_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    row = (App.objects.filter(pk=app_id)
           .values_list("company__fair_weight", "company__max_in_flight", "fair_weight", "max_in_flight",
                        "max_backlog").first())
    config = FairConfig(*row) if row else FairConfig()
    _configs[app_id] = (now + settings.MAGEAGENT["FAIR_CONFIG_CACHE_S"], config)
    return config


def fair_backlog(*, app_id: int) -> int:
    return int(sync_client().zcard(f"{prefix()}q:{app_id}"))


# --- what the reconciler and the metrics read --------------------------------------------
def fair_holding(task_ids: list[str]) -> set[str]:
    """The ids among `task_ids` waiting in a fair queue or sent and not yet taken."""
    p = prefix()
    pipe = sync_client().pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hexists(f"{p}m", task_id)
        pipe.zscore(f"{p}win", task_id)
    replies = pipe.execute()
    return {task_id for i, task_id in enumerate(task_ids) if replies[2 * i] or replies[2 * i + 1] is not None}


def fair_window_older_than(seconds: float) -> list[str]:
    cutoff = int((time.time() - seconds) * 1000)
    ids = cast(list[bytes], sync_client().zrangebyscore(f"{prefix()}win", "-inf", cutoff))
    return [_text(v) for v in ids]


def fair_window_ids() -> list[str]:
    """Sent and not yet taken, oldest first."""
    return [_text(v) for v in cast(list[bytes], sync_client().zrange(f"{prefix()}win", 0, -1))]


def fair_in_flight_ids() -> list[str]:
    return [_text(v) for v in sync_client().hkeys(f"{prefix()}r")]


def fair_tenants(apps: dict[int, int]) -> dict[str, dict[int, dict[str, Any]]]:
    """Waiting and in-flight counts, weights and shares of the in-flight tasks for the apps
    of `apps` (app id -> company id) and their companies; one pipelined round trip."""
    p = prefix()
    companies = sorted(set(apps.values()))
    pipe = sync_client().pipeline(transaction=False)
    pipe.hlen(f"{p}r")
    pipe.hgetall(f"{p}cfg")
    for cid in companies:
        pipe.scard(f"{p}if:c:{cid}")
    for aid in apps:
        pipe.scard(f"{p}if:a:{aid}")
        pipe.zcard(f"{p}q:{aid}")
    total, raw_config, *counts = pipe.execute()
    config = {_text(k): int(float(v)) for k, v in raw_config.items()}

    def share(running: int) -> float:
        return round(running / total, 4) if total else 0.0

    out: dict[str, dict[int, dict[str, Any]]] = {"companies": {}, "apps": {}}
    for i, cid in enumerate(companies):
        out["companies"][cid] = {"waiting": 0, "running": counts[i], "share": share(counts[i]),
                                 "weight": config.get(f"wc:{cid}", 1)}
    for j, (aid, cid) in enumerate(apps.items()):
        running, waiting = counts[len(companies) + 2 * j], counts[len(companies) + 2 * j + 1]
        out["apps"][aid] = {"waiting": waiting, "running": running, "share": share(running),
                            "weight": config.get(f"wa:{aid}", 1)}
        out["companies"][cid]["waiting"] += waiting
    return out


def fair_totals() -> dict[str, int]:
    """Totals for the Prometheus gauges: tasks waiting in fair queues, sent but not taken,
    in flight, and companies with waiting tasks."""
    p = prefix()
    pipe = sync_client().pipeline(transaction=False)
    pipe.hlen(f"{p}m")
    pipe.zcard(f"{p}win")
    pipe.hlen(f"{p}r")
    pipe.zcard(f"{p}c")
    waiting, window, in_flight, companies = pipe.execute()
    return {"waiting": waiting, "window": window, "in_flight": in_flight, "companies_waiting": companies}
