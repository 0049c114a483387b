"""Rate limits shared by every process: a provider deployment's rpm/tpm (routing) and an
app's requests per minute (the API, mageagent/tenancy/throttling.py). Two token buckets
per limited thing in Redis, checked and taken in one Lua script, so concurrent workers
can never both take the last request or token. A call that does not fit waits (asyncio.sleep on
the worker's loop, for exactly as long as the bucket needs to refill) and tries again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from django.conf import settings

from mageagent.redis import async_script, sync_script

# KEYS: rpm bucket, tpm bucket. ARGV: rpm, tpm, tokens, burst seconds, mode (take | adjust).
# Returns the seconds to wait ("0" when taken). Buckets refill continuously at limit/60
# per second up to limit * burst / 60; `adjust` books a correction of tokens (the actual
# use minus the estimate) without waiting.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local function level(key, limit)
  local cap = math.max(limit * burst / 60, 1)
  local v = redis.call('HMGET', key, 'level', 'ts')
  local lvl, ts = tonumber(v[1]), tonumber(v[2])
  if not lvl then return cap, cap end
  return math.min(cap, lvl + (now - ts) * limit / 60), cap
end
local function store(key, value)
  redis.call('HSET', key, 'level', value, 'ts', now)
  redis.call('EXPIRE', key, 600)
end
if ARGV[5] == 'adjust' then
  if tpm > 0 then local l = level(KEYS[2], tpm); store(KEYS[2], l - need) end
  return '0'
end
local wait, rl, tl, cap = 0, 0, 0, 0
if rpm > 0 then
  rl = level(KEYS[1], rpm)
  if rl < 1 then wait = math.max(wait, (1 - rl) * 60 / rpm) end
end
if tpm > 0 then
  tl, cap = level(KEYS[2], tpm)
  need = math.min(need, cap)
  if tl < need then wait = math.max(wait, (need - tl) * 60 / tpm) end
end
if wait > 0 then return tostring(wait) end
if rpm > 0 then store(KEYS[1], rl - 1) end
if tpm > 0 then store(KEYS[2], tl - need) end
return '0'
"""


def _keys(deployment_id: str) -> list[str]:
    ns = settings.MAGEAGENT_ROUTING["REDIS_NAMESPACE"]
    return [f"{ns}:rl:{deployment_id}:rpm", f"{ns}:rl:{deployment_id}:tpm"]


async def rate_limit_try(deployment_id: str, *, rpm: int | None, tpm: int | None, tokens: int,
                         burst_s: float | None = None) -> float:
    """Take one request and `tokens` tokens if they fit now; else the seconds to wait."""
    burst = burst_s if burst_s is not None else settings.MAGEAGENT_ROUTING["RATE_LIMIT_BURST_S"]
    args = [rpm or 0, tpm or 0, max(tokens, 0), burst, "take"]
    raw = await async_script(_SCRIPT)(keys=_keys(deployment_id), args=args)
    return float(raw)


def rate_limit_try_sync(bucket_id: str, *, rpm: int, burst_s: float) -> float:
    """rate_limit_try for one request of a sync caller (the API's per-app limit,
    mageagent/tenancy/throttling.py), in its own bucket: 0 when taken, else the wait."""
    return float(sync_script(_SCRIPT)(keys=_keys(bucket_id), args=[rpm, 0, 0, burst_s, "take"]))


async def rate_limit_acquire(deployment_id: str, *, rpm: int | None, tpm: int | None, tokens: int,
                             burst_s: float | None = None,
                             on_wait: Callable[[float], Awaitable[None]] | None = None,
                             before_sleep: Callable[[float], None] | None = None) -> float:
    """Wait until the deployment has room for one more call; returns the time waited.
    `before_sleep` hears of every sleep before it starts (the caller's time limit excludes it)."""
    if not rpm and not tpm:
        return 0.0
    waited = 0.0
    while True:
        wait = await rate_limit_try(deployment_id, rpm=rpm, tpm=tpm, tokens=tokens, burst_s=burst_s)
        if wait <= 0:
            return waited
        if on_wait is not None and waited == 0.0:
            await on_wait(wait)
        # A few ms past the refill moment: another worker may take it first, then we wait again.
        if before_sleep is not None:
            before_sleep(wait + 0.005)
        await asyncio.sleep(wait + 0.005)
        waited += wait


async def rate_limit_adjust(deployment_id: str, *, tpm: int | None, tokens: int) -> None:
    """Book the difference between the tokens a call used and the estimate it took."""
    if tpm and tokens:
        await async_script(_SCRIPT)(keys=_keys(deployment_id),
                        args=[0, tpm, tokens, settings.MAGEAGENT_ROUTING["RATE_LIMIT_BURST_S"], "adjust"])
