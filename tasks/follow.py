"""Following a task's events exactly once, whenever the client connects.

Subscribers join the task's Channels group first, then replay the log after their
position, then take live events. Each live event carries its seq: one at or below the
position is a duplicate of the replay and dropped; one past the next expected means a
live message was missed (a slow consumer, a reconnect), so the gap is filled from the
log. Because the log is written before the event is published (tasks/events.py), the log
always holds whatever the group delivered. While idle, the log is re-checked now and then,
which also covers the instant between subscribing and the first replay.

A follower outlives a Redis (or database) outage: reads that fail are retried every
second, the SSE heartbeat goes on, and the follower resumes where it was once the log
can be read again. A log that stays unreadable for FOLLOW_OUTAGE_S raises LogUnavailable,
and the stream ends in a way its client acts on (SSE: the response ends and EventSource
reconnects with Last-Event-ID; WebSocket: close code 4503 after an `unavailable` error frame).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from channels.layers import get_channel_layer
from django.conf import settings

from mageagent.errors import dependency_down
from mageagent.handlers import stream_db

from . import events
from .models import Task, TaskStatus

IDLE_RECHECKS = (0.25, 1.0)  # then every IDLE_RECHECK_EVERY seconds
IDLE_RECHECK_EVERY = 5.0
OUTAGE_RECHECK_EVERY = 1.0  # while the log cannot be read
PING_SLACK = 0.8  # heartbeats are due at this fraction of the promised interval


def parse_position(raw: str) -> int:
    """A resume position (Last-Event-ID, ?after=): ValueError with a message when malformed."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"not an event sequence number: {raw[:40]!r}") from None
    if not 0 <= value <= events.MAX_POSITION:
        raise ValueError(f"the event position must be between 0 and {events.MAX_POSITION}")
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


def _renumbered(raw: str, seq: int) -> str:
    return f'{{"seq":{seq},' + raw[raw.index(",") + 1:]


def synthesized_after(task: Task, after: int) -> list[str]:
    """The synthesized log past `after`. A client resuming beyond its few events (it had
    read further into the expired log) still gets `done`, numbered after its position, so
    every follower of a finished task ends."""
    raws = synthesized_events(task)
    tail = _after(raws, after)
    if raws and not tail:
        tail = [_renumbered(raws[-1], after + 1)]
    return tail


def events_page(task: Task, *, after: int) -> dict[str, Any]:
    closed = events.is_closed(str(task.id))  # before reading, so `done` is in what we read
    raws = events.read_after(str(task.id), after)
    if raws is None:
        raws, closed = synthesized_after(task, after), task.is_terminal
    return {"events": [orjson.loads(raw) for raw in raws], "done": closed}


logger = logging.getLogger(__name__)


class LogUnavailable(Exception):
    """The task's log could not be read for FOLLOW_OUTAGE_S: end the stream, the client
    resumes from its position."""


class Follower:
    """Exactly-once delivery state for one subscriber of one task."""

    def __init__(self, task_id: str, after: int = 0) -> None:
        self.task_id = task_id
        self.position = after
        self.done = False
        self.unreadable_since: float | None = None  # monotonic time of the first failed read
        self.subscribed = False  # to the task's group; a follower that is not polls the log

    @property
    def unreadable(self) -> bool:
        return self.unreadable_since is not None

    async def replay(self) -> list[str]:
        """The events past the position, once each; [] while the log cannot be read (see
        LogUnavailable)."""
        try:
            taken = await self._replay()
        except Exception as exc:
            if dependency_down(exc) is None:
                raise
            now = time.monotonic()
            if self.unreadable_since is None:
                self.unreadable_since = now
                logger.warning("cannot read the log of task %s: %r", self.task_id, exc)
            elif now - self.unreadable_since >= settings.MAGEAGENT["FOLLOW_OUTAGE_S"]:
                raise LogUnavailable(f"the log of task {self.task_id} has been unreadable since "
                                     f"{now - self.unreadable_since:.0f} s") from exc
            return []
        self.unreadable_since = None
        return taken

    async def _replay(self) -> list[str]:
        raws = await events.aread_after(self.task_id, self.position)
        if raws is None:
            task = await stream_db(Task.objects.filter(pk=self.task_id).first)()
            taken = self._take(synthesized_after(task, self.position) if task else [])
            if task is not None and task.is_terminal:
                self.done = True
            return taken
        taken = self._take(raws)
        if not raws and not self.done:
            tail = await events.aclosed_tail(self.task_id)
            if tail is not None:
                # Resumed at or past the end of a finished task: its `done` again, numbered
                # after the position (as for an expired log), so that every client ends.
                taken = self._take([_renumbered(tail, self.position + 1)])
        return taken

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


async def subscribe(layer: Any, follower: Follower, channel: str) -> None:
    """Join the task's group; during an outage the follower polls the log and tries again."""
    try:
        await layer.group_add(events.group_name(follower.task_id), channel)
        follower.subscribed = True
    except Exception as exc:
        if dependency_down(exc) is None:
            raise


async def unsubscribe(layer: Any, follower: Follower, channel: str) -> None:
    try:
        await layer.group_discard(events.group_name(follower.task_id), channel)
    except Exception as exc:
        if dependency_down(exc) is None:
            raise
    follower.subscribed = False


async def _new_channel(layer: Any) -> str | None:
    try:
        return str(await layer.new_channel())
    except Exception as exc:
        if dependency_down(exc) is None:
            raise
        return None  # Redis is down: follow by polling the log


async def follow(task_id: str, after: int = 0, *, idle_s: float | None = None) -> AsyncIterator[str | None]:
    """Yield each event of the task once (raw JSON), ending after `done`. When idle_s is set,
    yield None (the SSE heartbeat) so that no more than idle_s pass without a yield, also
    while Redis is down. Raises LogUnavailable when the log stays unreadable."""
    layer = get_channel_layer()
    channel = await _new_channel(layer)
    inbox: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def pump(channel: str) -> None:
        # Never cancel layer.receive() on a timeout: the pub/sub layer drops the channel.
        while True:
            message = await layer.receive(channel)
            inbox.put_nowait(message["raw"])

    follower = Follower(task_id, after)
    pump_task = None
    if channel is not None:
        await subscribe(layer, follower, channel)
        pump_task = asyncio.ensure_future(pump(channel))

    def next_recheck() -> float:
        if follower.unreadable or not follower.subscribed:
            return loop.time() + OUTAGE_RECHECK_EVERY
        return loop.time() + (rechecks[0] if rechecks else IDLE_RECHECK_EVERY)

    # The heartbeat runs on the wall clock since the last yield (what was actually sent, not
    # what arrived: duplicates yield nothing), due early enough to absorb a Redis round trip
    # and the loop's lateness.
    ping_every = PING_SLACK * idle_s if idle_s is not None else None
    last_sent = loop.time()
    rechecks = list(IDLE_RECHECKS)
    try:
        for raw in await follower.replay():
            yield raw
            last_sent = loop.time()
        recheck_at = next_recheck()
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
                    if channel is not None and not follower.subscribed and not follower.unreadable:
                        await subscribe(layer, follower, channel)
                    recheck_at = next_recheck()
                if ping_every is not None and not follower.done and loop.time() >= last_sent + ping_every:
                    yield None
                    last_sent = loop.time()
                continue
            # The log is re-checked only after a quiet spell: live events fill gaps themselves.
            recheck_at = next_recheck()
            for fresh in await follower.live(raw):
                yield fresh
                last_sent = loop.time()
    finally:
        if pump_task is not None:
            pump_task.cancel()
        if channel is not None and follower.subscribed:
            await unsubscribe(layer, follower, channel)
