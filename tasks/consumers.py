"""WebSockets: one task (`/tasks/{id}/ws`) or many over one socket (`/mageagent/ws`).

What they do is tasks/subscriptions.py's, shared with Socket.IO; here is the framing.
"""

from __future__ import annotations

from typing import Any

import orjson
from channels.auth import get_user
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from mageagent import metrics
from mageagent.errors import AuthenticationFailed, error_body
from mageagent.tenancy.access import query_params

from .follow import parse_position
from .subscriptions import UNAVAILABLE_MESSAGE, TaskSubscriptions

# The close code of a per-task socket whose log stayed unreadable (Redis down): 4503, like
# the other refusals' 4400/4401/4404/4429 (daphne's autobahn sends only 1000 and 3000-4999,
# not 1013 "Try Again Later"). The client reconnects with ?after= the last seq it saw.
CLOSE_TRY_AGAIN = 4503


class _TaskSocket(TaskSubscriptions, AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.start_subscriptions()
        self.query = query_params(self.scope.get("query_string", b""))
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        # Accept before anything waits for a thread of the shared pool (the key's lookup,
        # a staff session's user): daphne drops a handshake left open 5 s, so a loaded
        # server refused sockets, which an SSE request, simply waiting its turn, never is.
        # A bad key still gets its error event and close code 4401.
        await self.accept()
        refused = await self.open_for(headers, self.query.get("token"), auser=lambda: get_user(self.scope))
        if refused is not None:
            await self.send_error(None, refused.code, refused.message)
            await self.close(code=4401 if isinstance(refused, AuthenticationFailed) else 4429)
            return
        self.counted = True
        metrics.FOLLOWERS.labels(kind="websocket").inc()
        await self.opened()

    async def opened(self) -> None:
        pass

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            metrics.FOLLOWERS.labels(kind="websocket").dec()
        await self.close_subscriptions()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections (a hop into the thread pool) before every
        # message: once per event per subscriber, and before the handshake (see connect).
        # Every database call here goes through database_sync_to_async, which closes stale
        # connections itself, so the handler runs directly.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

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

    async def log_unavailable(self, task_id: str) -> None:
        await self.send_error(task_id, "unavailable", UNAVAILABLE_MESSAGE)
        await self.unsubscribe(task_id)
        await self.close(code=CLOSE_TRY_AGAIN)


class MultiplexConsumer(_TaskSocket):
    """WS /mageagent/ws: subscribe-task / unsubscribe-task / cancel-task for many tasks."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.tenant is None:
            return  # refused at the handshake and being closed: its frames are not read
        frame = self.parse(text_data)
        if frame is None:
            await self.send_error(None, "validation_error", "frames must be JSON objects")
            return
        await self.command(frame)

    async def send_event(self, task_id: str, raw: str) -> None:
        await self.send(text_data=f'{{"type":"task-update","taskId":"{task_id}","data":{raw}}}')

    async def send_error(self, task_id: str | None, code: str, message: str) -> None:
        frame = {"type": "error", "taskId": task_id, **error_body(code, message)}
        await self.send(text_data=orjson.dumps(frame).decode())
