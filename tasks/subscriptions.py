"""A socket's subscriptions to tasks, whatever carries the socket: the WebSockets
(tasks/consumers.py) and Socket.IO (tasks/socketio_app.py) share the key and rate limit at
the open, subscribe-task / unsubscribe-task / cancel-task, and delivery.

Each subscription is a Follower (tasks/follow.py) fed by the task's Channels group, so a
socket delivers every event exactly once whenever it subscribes. A transport provides
`channel_layer` and `channel_name` (the channel it reads: it hands each `task.event`
message to task_event) and the send_event / send_error / finished hooks.

Through a Redis outage a subscription stays and its log is read again every second; one
whose log stays unreadable for FOLLOW_OUTAGE_S ends with an `unavailable` error for its
task (log_unavailable), and the client subscribes again with `after` its last seq.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async

from mageagent.errors import AuthenticationFailed, DomainError
from mageagent.handlers import stream_db, waiting_threads
from mageagent.tenancy.access import tenant_from
from mageagent.tenancy.auth import Tenant
from mageagent.tenancy.throttling import rate_limited, stream_open_wait

from . import selectors, services
from .follow import IDLE_RECHECK_EVERY, OUTAGE_RECHECK_EVERY, Follower, LogUnavailable, subscribe, unsubscribe

UNAVAILABLE_MESSAGE = "the task's event log is unavailable; subscribe again after the last seq you saw"


class TaskSubscriptions:
    tenant: Tenant | None
    channel_layer: Any
    channel_name: str

    def start_subscriptions(self) -> None:
        self.tenant = None
        self.followers: dict[str, Follower] = {}
        self.lock = asyncio.Lock()
        self.recheck: asyncio.Task[None] | None = None

    async def open_for(self, headers: dict[str, str], token: str | None,
                       auser: Callable[[], Awaitable[object]] | None = None) -> DomainError | None:
        """The refusal of a socket's open (no or a bad key, the app's rate limit), or None."""
        self.tenant = await tenant_from(headers, token, auser=auser)
        if self.tenant is None:
            return AuthenticationFailed("an API key is required")
        wait = await stream_open_wait(self.tenant)
        if wait > 0:
            return rate_limited(wait)
        self.recheck = asyncio.ensure_future(self._recheck_forever())
        return None

    async def close_subscriptions(self) -> None:
        recheck = getattr(self, "recheck", None)
        if recheck is not None:
            recheck.cancel()
        for task_id in list(getattr(self, "followers", {})):
            await self.unsubscribe(task_id)

    async def command(self, frame: dict[str, Any]) -> None:
        """A client's `{"type": "subscribe-task" | "unsubscribe-task" | "cancel-task",
        "taskId", "after"?}`, from an open socket."""
        kind, task_id = frame.get("type"), frame.get("taskId")
        if not isinstance(task_id, str) or not task_id:
            await self.send_error(None, "validation_error", "taskId is required")
            return
        if kind == "subscribe-task":
            after = frame.get("after", 0)
            if not isinstance(after, int) or isinstance(after, bool) or after < 0:
                await self.send_error(task_id, "validation_error", "after must be an integer >= 0")
                return
            # Each subscription counts against the app's rate limit, as opening a stream of its
            # own would: one socket must not follow without limit. Refused, the socket stays.
            assert self.tenant is not None
            wait = await stream_open_wait(self.tenant)
            if wait > 0:
                refused = rate_limited(wait)
                await self.send_error(task_id, refused.code, refused.message)
                return
            await self.subscribe(task_id, after)
        elif kind == "unsubscribe-task":
            await self.unsubscribe(task_id)
        elif kind == "cancel-task":
            await self.cancel(task_id)
        else:
            await self.send_error(task_id, "validation_error", f"unknown frame type {kind!r}")

    async def subscribe(self, task_id: str, after: int) -> bool:
        try:
            task = await stream_db(selectors.task_get)(tenant=self.tenant, task_id=task_id)
        except DomainError as exc:
            await self.send_error(task_id, exc.code, exc.message)
            return False
        task_id = str(task.id)
        async with self.lock:
            follower = self.followers[task_id] = Follower(task_id, after)
            await subscribe(self.channel_layer, follower, self.channel_name)  # Redis down: it polls
            await self._deliver(task_id, await follower.replay())  # a new follower: never LogUnavailable
        return True

    async def unsubscribe(self, task_id: str) -> None:
        follower = self.followers.pop(task_id, None)
        if follower is not None and follower.subscribed:
            await unsubscribe(self.channel_layer, follower, self.channel_name)

    async def task_event(self, message: dict[str, Any]) -> None:
        async with self.lock:
            follower = self.followers.get(message["task"])
            if follower is not None:
                try:
                    await self._deliver(follower.task_id, await follower.live(message["raw"]))
                except LogUnavailable:
                    await self.log_unavailable(follower.task_id)

    async def _recheck_forever(self) -> None:
        delays = [0.25, 1.0]
        while True:
            outage = any(f.unreadable or not f.subscribed for f in self.followers.values())
            await asyncio.sleep(OUTAGE_RECHECK_EVERY if outage else delays.pop(0) if delays else IDLE_RECHECK_EVERY)
            async with self.lock:
                for follower in list(self.followers.values()):
                    try:
                        await self._deliver(follower.task_id, await follower.replay())
                    except LogUnavailable:
                        await self.log_unavailable(follower.task_id)
                        continue
                    if not follower.subscribed and not follower.unreadable and not follower.done:
                        await subscribe(self.channel_layer, follower, self.channel_name)

    async def log_unavailable(self, task_id: str) -> None:
        """The task's log stayed unreadable (Redis down): its subscription ends with an
        `unavailable` error; the client subscribes again with `after`. A transport may close
        the socket instead."""
        await self.send_error(task_id, "unavailable", UNAVAILABLE_MESSAGE)
        await self.unsubscribe(task_id)

    async def _deliver(self, task_id: str, raws: list[str]) -> None:
        for raw in raws:
            await self.send_event(task_id, raw)
        follower = self.followers.get(task_id)
        if follower is not None and follower.done:
            await self.finished(task_id)

    async def cancel(self, task_id: str) -> None:
        try:
            task = await stream_db(selectors.task_get)(tenant=self.tenant, task_id=task_id)
            # A cancel waits up to CANCEL_WAIT_S for its worker: not on the few threads every
            # follower's lookups share.
            await database_sync_to_async(services.task_cancel, thread_sensitive=False,
                                         executor=waiting_threads())(task=task)
        except DomainError as exc:
            await self.send_error(task_id, exc.code, exc.message)

    async def send_event(self, task_id: str, raw: str) -> None:
        raise NotImplementedError

    async def send_error(self, task_id: str | None, code: str, message: str) -> None:
        raise NotImplementedError

    async def finished(self, task_id: str) -> None:
        await self.unsubscribe(task_id)
