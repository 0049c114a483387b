"""The worker's chunk emitter (tasks/runtime/pipeline.py) at the edges of cancellation."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from providers.llm import Deployment
from tasks import events
from tasks.runtime.pipeline import AttemptPlan, ChunkEmitter


def plan() -> AttemptPlan:
    return AttemptPlan(task_id=f"emit-{uuid.uuid4().hex}", attempt=1, owner=events.ANY_OWNER, messages=[],
                       deployment=Deployment(model="sim", provider="sim", litellm_model="openai/sim"),
                       start_events=[])


def test_a_chunk_whose_append_lands_after_a_cancel_is_kept_in_the_answer(monkeypatch):
    landed: list[bytes] = []

    async def land_late(bodies):
        await asyncio.sleep(0.05)
        landed.extend(bodies)
        return len(landed)

    def append_that_lands_late(task_id, *bodies, owner=events.ANY_OWNER, close=False, tokens=None):
        # Like the batcher: a future that, once sent, completes whoever stopped waiting for it.
        return asyncio.ensure_future(land_late(bodies))

    monkeypatch.setattr(events, "aappend", append_that_lands_late)

    async def main() -> ChunkEmitter:
        emitter = ChunkEmitter(plan())
        assert emitter.add("partial answer")  # the first token goes out at once
        flushing = asyncio.ensure_future(emitter.flush())
        await asyncio.sleep(0.01)  # the append is in flight
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        return emitter

    emitter = asyncio.run(main())

    assert len(landed) == 1  # in the log...
    assert emitter.content == "partial answer"  # ...and in the answer the task keeps


def test_the_provider_is_read_at_once_until_the_first_chunk_then_at_the_windows_pace(monkeypatch):
    async def lands(task_id, *bodies, owner=events.ANY_OWNER, close=False, tokens=None):
        return 1

    monkeypatch.setattr(events, "aappend", lambda *a, **kw: asyncio.ensure_future(lands(*a, **kw)))

    async def main() -> tuple[float, float, float]:
        emitter = ChunkEmitter(plan())
        before = emitter.pace()
        assert emitter.add("first")
        await emitter.flush()
        during = emitter.pace()
        emitter.last_flush -= emitter.window  # the window has passed
        return before, during, emitter.pace()

    before, during, after = asyncio.run(main())

    assert before == 0.0  # the first token waits for nothing
    assert 0 < during <= plan().coalesce_s
    assert after <= 0


def test_a_read_paced_to_the_windows_end_sends_inline_even_a_tick_early_and_the_timer_waits_past_the_end(monkeypatch):
    monkeypatch.setattr(events, "aappend", lambda *a, **kw: asyncio.ensure_future(asyncio.sleep(0, 1)))

    async def main() -> tuple[bool, float, bool]:
        emitter = ChunkEmitter(plan())
        assert emitter.add("first")
        await emitter.flush()
        early = emitter.add("a word")  # mid-window: buffered, a timer armed
        assert emitter.timer is not None
        timer_after_end = emitter.timer.when() - (emitter.last_flush + emitter.window)
        await emitter.flush()
        emitter.last_flush -= emitter.window - 0.001  # the window ends in 1 ms
        return early, timer_after_end, emitter.add("next")

    early, timer_after_end, due = asyncio.run(main())

    assert not early
    assert timer_after_end > 0  # a read at the window's end sends it, not the timer
    assert due  # within a tick of the end: sent now, no timer
