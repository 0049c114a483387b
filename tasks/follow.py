"""Following a task's events exactly once, whenever the client connects.

Subscribers join the task's Channels group first, then replay the log after their
position, then take live events. Each live event carries its seq: one at or below the
position is a duplicate of the replay and dropped; one past the next expected means a
live message was missed (a slow consumer, a reconnect), so the gap is filled from the
log. Because the log is written before the event is published (tasks/events.py), the log
always holds whatever the group delivered. While idle, the log is re-checked now and then,
which also covers the instant between subscribing and the first replay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from channels.layers import get_channel_layer

from mageagent.handlers import stream_db

from . import events
from .models import Task, TaskStatus

IDLE_RECHECKS = (0.25, 1.0)  # then every IDLE_RECHECK_EVERY seconds
IDLE_RECHECK_EVERY = 5.0
PING_SLACK = 0.8  # heartbeats are due at this fraction of the promised interval


def parse_position(raw: str) -> int:
    """A resume position (Last-Event-ID, ?after=): ValueError with a message when malformed."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"not an event sequence number: {raw!r}") from None
    if value < 0:
        raise ValueError("the event position must be >= 0")
    return value


def synthesized_events(task: Task) -> list[str]:
    """A finished task whose log expired: its stored content as one chunk, then `done`."""
    if task.status not in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
        return []
    out: list[str] = []
    content = (task.result or {}).get("content")
    if content:
        out.append('{"seq":1,' + events.encode("chunk", content=content).decode())
    done: dict[str, Any] = {"done": True, "status": task.status}
    if task.status == TaskStatus.FAILED:
        done["error"] = task.error
    else:
        done["result"] = task.result
    out.append(f'{{"seq":{len(out) + 1},' + events.encode("done", **done).decode())
    return out


def _after(raws: list[str], after: int) -> list[str]:
    return [raw for raw in raws if events.peek(raw)[0] > after]


def synthesized_after(task: Task, after: int) -> list[str]:
    """The synthesized log past `after`. A client resuming beyond its few events (it had
    read further into the expired log) still gets `done`, numbered after its position, so
    every follower of a finished task ends."""
    raws = synthesized_events(task)
    tail = _after(raws, after)
    if raws and not tail:
        done = raws[-1]
        tail = [f'{{"seq":{after + 1},' + done[done.index(",") + 1:]]
    return tail


def events_page(task: Task, *, after: int) -> dict[str, Any]:
    closed = events.is_closed(str(task.id))  # before reading, so `done` is in what we read
    raws = events.read_after(str(task.id), after)
    if raws is None:
        raws, closed = synthesized_after(task, after), task.is_terminal
    return {"events": [orjson.loads(raw) for raw in raws], "done": closed}


class Follower:
    """Exactly-once delivery state for one subscriber of one task."""

    def __init__(self, task_id: str, after: int = 0) -> None:
        self.task_id = task_id
        self.position = after
        self.done = False

    async def replay(self) -> list[str]:
        raws = await events.aread_after(self.task_id, self.position)
        if raws is None:
            task = await stream_db(Task.objects.filter(pk=self.task_id).first)()
            taken = self._take(synthesized_after(task, self.position) if task else [])
            if task is not None and task.is_terminal:
                self.done = True
            return taken
        return self._take(raws)

    async def live(self, raw: str) -> list[str]:
        seq, _ = events.peek(raw)
        if seq <= self.position:
            return []
        if seq > self.position + 1:
            return await self.replay()
        return self._take([raw])

    def _take(self, raws: list[str]) -> list[str]:
        out = []
        for raw in raws:
            seq, kind = events.peek(raw)
            if seq <= self.position or self.done:
                continue
            self.position = seq
            out.append(raw)
            if kind == "done":
                self.done = True
        return out


async def follow(task_id: str, after: int = 0, *, idle_s: float | None = None) -> AsyncIterator[str | None]:
    """Yield each event of the task once (raw JSON), ending after `done`. When idle_s is set,
    yield None (the SSE heartbeat) so that no more than idle_s pass without a yield."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    inbox: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def pump() -> None:
        # Never cancel layer.receive() on a timeout: the pub/sub layer drops the channel.
        while True:
            message = await layer.receive(channel)
            inbox.put_nowait(message["raw"])

    await layer.group_add(events.group_name(task_id), channel)
    pump_task = asyncio.ensure_future(pump())
    follower = Follower(task_id, after)
    # The heartbeat runs on the wall clock since the last yield (what was actually sent, not
    # what arrived: duplicates yield nothing), due early enough to absorb a Redis round trip
    # and the loop's lateness.
    ping_every = PING_SLACK * idle_s if idle_s is not None else None
    last_sent = loop.time()
    try:
        for raw in await follower.replay():
            yield raw
            last_sent = loop.time()
        rechecks = list(IDLE_RECHECKS)
        recheck_at = loop.time() + rechecks[0]
        while not follower.done:
            due = recheck_at if ping_every is None else min(recheck_at, last_sent + ping_every)
            try:
                raw = await asyncio.wait_for(inbox.get(), timeout=max(due - loop.time(), 0.001))
            except TimeoutError:
                if loop.time() >= recheck_at:
                    if rechecks:
                        rechecks.pop(0)
                    for missed in await follower.replay():
                        yield missed
                        last_sent = loop.time()
                    recheck_at = loop.time() + (rechecks[0] if rechecks else IDLE_RECHECK_EVERY)
                if ping_every is not None and not follower.done and loop.time() >= last_sent + ping_every:
                    yield None
                    last_sent = loop.time()
                continue
            # The log is re-checked only after a quiet spell: live events fill gaps themselves.
            recheck_at = loop.time() + (rechecks[0] if rechecks else IDLE_RECHECK_EVERY)
            for fresh in await follower.live(raw):
                yield fresh
                last_sent = loop.time()
    finally:
        pump_task.cancel()
        await layer.group_discard(events.group_name(task_id), channel)
