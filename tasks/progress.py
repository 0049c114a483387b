"""Honest progress: how many tokens a running task has streamed, how many it is expected to
stream, and an estimate of its duration revised as it runs.

Each model's speed (time to first token, tokens per second) is a moving average over its
recently completed tasks, one small Redis hash per model written when a task completes. A
running task's token count is a field of its event log's hash, which the worker sets with
the chunk it appends once every PROGRESS_EVERY_S per stream (no call of its own, never in
the database). Both are read when a Task is rendered, and only for a task that is processing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from . import events
from .models import Task, TaskStatus

logger = logging.getLogger(__name__)

SPEED_TTL_S = 7 * 86400
ALPHA = 0.2  # weight of the newest task in a model's moving averages
# A model nobody measured yet: a typical hosted model's speed.
DEFAULT_TTFT_MS, DEFAULT_TOKENS_PER_S = 800.0, 50.0

_EWMA = f"""
local alpha = tonumber(ARGV[#ARGV])
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
for i = 1, #ARGV - 1, 2 do
  local new = tonumber(ARGV[i + 1])
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  if n > 1 and old then new = old + alpha * (new - old) end
  redis.call('HSET', KEYS[1], ARGV[i], tostring(new))
end
redis.call('EXPIRE', KEYS[1], {SPEED_TTL_S})
return n
"""


@dataclass(frozen=True)
class Speed:
    ttft_ms: float
    tokens_per_s: float
    measured: int  # completed tasks behind the averages


def speed_key(model: str) -> str:
    return f"ma:speed:{model}"


def speed_record(*, model: str, ttft_ms: float, tokens_per_s: float) -> None:
    """Fold one completed task's measurements into the model's moving averages."""
    script = events.sync_script(_EWMA)
    script(keys=[speed_key(model)], args=["ttft_ms", ttft_ms, "tokens_per_s", tokens_per_s, ALPHA])
    _speeds.pop(model, None)


_speeds: dict[str, tuple[float, Speed | None]] = {}


def speed_get(model: str) -> Speed | None:
    """The model's measured speed, cached per process for a few seconds (read per render)."""
    now = time.monotonic()
    hit = _speeds.get(model)
    if hit is not None and hit[0] > now:
        return hit[1]
    raw = events.sync_client().hgetall(speed_key(model))
    speed = None
    if raw:
        values = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
        speed = Speed(values.get("ttft_ms", DEFAULT_TTFT_MS), max(values.get("tokens_per_s", 0.0), 0.1),
                      int(values.get("n", 0)))
    _speeds[model] = (now + 5.0, speed)
    return speed


def tokens_get(task_id: str) -> int:
    raw = events.sync_client().hget(events.meta_key(task_id), "tokens")
    return int(raw) if raw else 0


def expected_tokens(routing: dict[str, Any] | None) -> int | None:
    """What routing expects the answer to take (its class's typical length, within max_tokens)."""
    routing = routing or {}
    expected = routing.get("estimated_output_tokens")
    if expected is None:
        return None
    cap = routing.get("max_tokens")
    return int(min(expected, cap) if cap else expected)


def routed_model(routing: dict[str, Any] | None) -> str | None:
    routing = routing or {}
    return routing.get("model_used") or routing.get("model")


def duration_estimate_ms(*, model: str | None, expected: int | None, tokens: int = 0,
                         streaming_for_s: float | None = None) -> int | None:
    """Milliseconds from the start of the answer to its end: the model's time to first
    token plus the expected tokens at its speed; once tokens flow, the time spent plus
    what is left at that speed."""
    if expected is None:
        return None
    speed = speed_get(model) if model else None
    ttft_ms = speed.ttft_ms if speed else DEFAULT_TTFT_MS
    tps = speed.tokens_per_s if speed else DEFAULT_TOKENS_PER_S
    remaining_ms = max(expected - tokens, 0) / tps * 1000
    if streaming_for_s is None:
        return int(ttft_ms + remaining_ms)
    return int(streaming_for_s * 1000 + remaining_ms)


def _ms_between(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(int((end - start).total_seconds() * 1000), 0)


def task_progress(task: Task) -> tuple[dict[str, Any], int | None]:
    """(progress, estimated_duration_ms) as the Task object shows them. The estimate spans
    creation to completion: for a finished task, what it took."""
    if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
        usage = (task.result or {}).get("usage") or {}
        tokens = usage.get("completion_tokens")
        if tokens is None:
            tokens = tokens_get(str(task.id)) if task.started_at else 0
        expected = tokens if task.status == TaskStatus.COMPLETED else expected_tokens(task.routing)
        return ({"tokens": tokens, "expected_tokens": expected},
                _ms_between(task.created_at, task.completed_at) or task.estimated_duration_ms)
    if task.status == TaskStatus.PROCESSING and task.started_at is not None:
        tokens = tokens_get(str(task.id))
        expected = expected_tokens(task.routing)
        if expected is not None:
            expected = max(expected, tokens)
        now = timezone.now()
        answer_ms = duration_estimate_ms(model=routed_model(task.routing), expected=expected, tokens=tokens,
                                         streaming_for_s=(now - task.started_at).total_seconds() if tokens else None)
        waited = _ms_between(task.created_at, task.started_at) or 0
        if answer_ms is None:
            return {"tokens": tokens, "expected_tokens": expected}, task.estimated_duration_ms
        if not tokens:  # not streaming yet: the time before the first token counts too
            answer_ms += _ms_between(task.started_at, now) or 0
        return {"tokens": tokens, "expected_tokens": expected}, waited + answer_ms
    return {"tokens": 0, "expected_tokens": expected_tokens(task.routing)}, task.estimated_duration_ms
