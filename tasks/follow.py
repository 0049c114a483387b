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
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from . import events
from .models import Task, TaskStatus

IDLE_RECHECKS = (0.25, 1.0)  # then every IDLE_RECHECK_EVERY seconds
IDLE_RECHECK_EVERY = 5.0


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


def events_page(task: Task, *, after: int) -> dict[str, Any]:
    closed = events.is_closed(str(task.id))  # before reading, so `done` is in what we read
    raws = events.read_after(str(task.id), after)
    if raws is None:
        raws, closed = _after(synthesized_events(task), after), task.is_terminal
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
            task = await database_sync_to_async(Task.objects.filter(pk=self.task_id).first)()
            raws = _after(synthesized_events(task), self.position) if task else []
            if task is not None and task.is_terminal:
                self.done = True
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
    yield None after that many idle seconds (the SSE heartbeat)."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    inbox: asyncio.Queue[str] = asyncio.Queue()

    async def pump() -> None:
        # Never cancel layer.receive() on a timeout: the pub/sub layer drops the channel.
        while True:
            message = await layer.receive(channel)
            inbox.put_nowait(message["raw"])

    await layer.group_add(events.group_name(task_id), channel)
    pump_task = asyncio.ensure_future(pump())
    follower = Follower(task_id, after)
    try:
        for raw in await follower.replay():
            yield raw
        rechecks = list(IDLE_RECHECKS)
        idle = 0.0
        while not follower.done:
            wait = rechecks[0] if rechecks else IDLE_RECHECK_EVERY
            if idle_s is not None:
                wait = min(wait, max(idle_s - idle, 0.001))
            try:
                raw = await asyncio.wait_for(inbox.get(), timeout=wait)
            except TimeoutError:
                idle += wait
                if rechecks:
                    rechecks.pop(0)
                for missed in await follower.replay():
                    yield missed
                if idle_s is not None and idle >= idle_s:
                    idle = 0.0
                    yield None
                continue
            idle = 0.0
            for fresh in await follower.live(raw):
                yield fresh
    finally:
        pump_task.cancel()
        await layer.group_discard(events.group_name(task_id), channel)
