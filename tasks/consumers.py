"""WebSockets: one task (`/tasks/{id}/ws`) or many over one socket (`/mageagent/ws`).

Each subscription is a Follower (tasks/follow.py) fed by the task's Channels group, so a
socket delivers every event exactly once whenever it subscribes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from channels.auth import get_user
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from mageagent.errors import DomainError, error_body
from mageagent.handlers import stream_db, waiting_threads
from mageagent.tenancy.access import query_params, tenant_from
from mageagent.tenancy.auth import Tenant
from mageagent.tenancy.throttling import rate_limited, stream_open_wait

from . import events, selectors, services
from .follow import IDLE_RECHECK_EVERY, Follower, parse_position


class _TaskSocket(AsyncWebsocketConsumer):
    tenant: Tenant | None

    async def connect(self) -> None:
        self.followers: dict[str, Follower] = {}
        self.lock = asyncio.Lock()
        self.recheck: asyncio.Task[None] | None = None
        self.query = query_params(self.scope.get("query_string", b""))
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        # Accept before anything waits for a thread of the shared pool (the key's lookup,
        # a staff session's user): daphne drops a handshake left open 5 s, so a loaded
        # server refused sockets, which an SSE request, simply waiting its turn, never is.
        # A bad key still gets its error event and close code 4401.
        await self.accept()
        self.tenant = await tenant_from(headers, self.query.get("token"), auser=lambda: get_user(self.scope))
        if self.tenant is None:
            await self.send_error(None, "authentication_failed", "an API key is required")
            await self.close(code=4401)
            return
        wait = await stream_open_wait(self.tenant)
        if wait > 0:
            refused = rate_limited(wait)
            await self.send_error(None, refused.code, refused.message)
            await self.close(code=4429)
            return
        self.recheck = asyncio.ensure_future(self._recheck_forever())
        await self.opened()

    async def opened(self) -> None:
        pass

    async def disconnect(self, code: int) -> None:
        if self.recheck is not None:
            self.recheck.cancel()
        for task_id in list(getattr(self, "followers", {})):
            await self.unsubscribe(task_id)

    async def subscribe(self, task_id: str, after: int) -> bool:
        try:
            task = await stream_db(selectors.task_get)(tenant=self.tenant, task_id=task_id)
        except DomainError as exc:
            await self.send_error(task_id, exc.code, exc.message)
            return False
        task_id = str(task.id)
        async with self.lock:
            self.followers[task_id] = Follower(task_id, after)
            await self.channel_layer.group_add(events.group_name(task_id), self.channel_name)
            await self._deliver(task_id, await self.followers[task_id].replay())
        return True

    async def unsubscribe(self, task_id: str) -> None:
        if self.followers.pop(task_id, None) is not None:
            await self.channel_layer.group_discard(events.group_name(task_id), self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections (a hop into the thread pool) before every
        # message: once per event per subscriber, and before the handshake (see connect).
        # Every database call here goes through database_sync_to_async, which closes stale
        # connections itself, so the handler runs directly.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def task_event(self, message: dict[str, Any]) -> None:
        async with self.lock:
            follower = self.followers.get(message["task"])
            if follower is not None:
                await self._deliver(follower.task_id, await follower.live(message["raw"]))

    async def _recheck_forever(self) -> None:
        delays = [0.25, 1.0]
        while True:
            await asyncio.sleep(delays.pop(0) if delays else IDLE_RECHECK_EVERY)
            async with self.lock:
                for follower in list(self.followers.values()):
                    await self._deliver(follower.task_id, await follower.replay())

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
        pass

    @staticmethod
    def parse(text: str | None) -> dict[str, Any] | None:
        try:
            frame = orjson.loads(text or "")
        except orjson.JSONDecodeError:
            return None
        return frame if isinstance(frame, dict) else None


class TaskSocketConsumer(_TaskSocket):
    """WS /mageagent/api/v1/tasks/{id}/ws: the task's events, one per frame; closes after done."""

    async def opened(self) -> None:
        # Like the SSE stream's 400 and 404, in frames: a bad position, an unknown task.
        try:
            after = parse_position(self.query.get("after") or "0")
        except ValueError as exc:
            await self.send_error(None, "validation_error", str(exc))
            await self.close(code=4400)
            return
        await self.subscribe(self.scope["url_route"]["kwargs"]["task_id"], after)
        if not self.followers:
            await self.close(code=4404)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = self.parse(text_data)
        if frame and frame.get("type") == "cancel" and self.followers:
            await self.cancel(next(iter(self.followers)))
        elif frame is None or frame.get("type") != "cancel":
            await self.send_error(None, "validation_error", 'expected {"type": "cancel"}')

    async def send_event(self, task_id: str, raw: str) -> None:
        await self.send(text_data=raw)

    async def send_error(self, task_id: str | None, code: str, message: str) -> None:
        await self.send(text_data=orjson.dumps({"type": "error", **error_body(code, message)}).decode())

    async def finished(self, task_id: str) -> None:
        await self.unsubscribe(task_id)
        await self.close(code=1000)


class MultiplexConsumer(_TaskSocket):
    """WS /mageagent/ws: subscribe-task / unsubscribe-task / cancel-task for many tasks."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.tenant is None:
            return  # refused at the handshake and being closed: its frames are not read
        frame = self.parse(text_data)
        if frame is None:
            await self.send_error(None, "validation_error", "frames must be JSON objects")
            return
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

    async def send_event(self, task_id: str, raw: str) -> None:
        await self.send(text_data=f'{{"type":"task-update","taskId":"{task_id}","data":{raw}}}')

    async def send_error(self, task_id: str | None, code: str, message: str) -> None:
        frame = {"type": "error", "taskId": task_id, **error_body(code, message)}
        await self.send(text_data=orjson.dumps(frame).decode())

    async def finished(self, task_id: str) -> None:
        await self.unsubscribe(task_id)
