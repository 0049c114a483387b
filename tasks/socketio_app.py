"""Socket.IO at the root path `/socket.io/`, for the seed's client: the multiplexed
WebSocket's subscriptions (tasks/subscriptions.py) in Socket.IO's events.

Handshake auth `{"token": KEY}` (or the query's `token=KEY`, or the key's headers);
client events `subscribe-task` `{taskId, after?}`, `unsubscribe-task`, `cancel-task`;
server events `task-update` (the event object plus `taskId`) and `error`
(`{"taskId"?, "error"}`).

Each connection reads a channel of its own on the channel layer, as a Channels consumer
does, and delivers its tasks' events from their logs exactly once. The layer brings every
task's events to every web process, so each process serves the sockets it holds and
Socket.IO's Redis manager (for emits between processes) is not needed. Long-polling, the
transport a Socket.IO client starts with, keeps its session in one process: behind one
address with several web processes, use sticky sessions or `transports: ["websocket"]`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import socketio
from channels.layers import get_channel_layer

from mageagent import metrics
from mageagent.errors import error_body, unavailable_for
from mageagent.tenancy.access import query_params

from .subscriptions import TaskSubscriptions


class SocketIOSession(TaskSubscriptions):
    """One Socket.IO connection's subscriptions."""

    def __init__(self, server: socketio.AsyncServer, sid: str) -> None:
        self.server = server
        self.sid = sid
        self.channel_layer = get_channel_layer()
        self.pump: asyncio.Task[None] | None = None
        self.start_subscriptions()

    async def listen(self) -> None:
        self.channel_name = await self.channel_layer.new_channel()
        self.pump = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        # Never cancel layer.receive() on a timeout: the pub/sub layer drops the channel.
        while True:
            message = await self.channel_layer.receive(self.channel_name)
            if message.get("type") == "task.event":
                await self.task_event(message)

    async def close(self) -> None:
        await self.close_subscriptions()
        if self.pump is not None:
            self.pump.cancel()

    async def send_event(self, task_id: str, raw: str) -> None:
        event = orjson.loads(raw)
        event["taskId"] = task_id
        await self.server.emit("task-update", event, to=self.sid)

    async def send_error(self, task_id: str | None, code: str, message: str) -> None:
        payload = error_body(code, message)
        if task_id is not None:
            payload["taskId"] = task_id
        await self.server.emit("error", payload, to=self.sid)


class TaskNamespace(socketio.AsyncNamespace):
    def __init__(self) -> None:
        super().__init__("/")
        self.sessions: dict[str, SocketIOSession] = {}

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        scope = environ["asgi.scope"]
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str):
            token = query_params(environ.get("QUERY_STRING", "")).get("token")
        session = SocketIOSession(self.server, sid)
        try:
            refused = await session.open_for(headers, token)
            if refused is None:
                await session.listen()
        except Exception as exc:
            refused = unavailable_for(exc)  # the key's lookup or the channel: a dependency down
            if refused is None:
                raise
            await session.close()
        if refused is not None:
            # The client's connect_error: `message`, and the contract's error body as `data`.
            raise socketio.exceptions.ConnectionRefusedError(refused.message, error_body(refused.code, refused.message))
        self.sessions[sid] = session
        metrics.FOLLOWERS.labels(kind="socketio").inc()

    async def on_disconnect(self, sid: str, reason: object = None) -> None:
        session = self.sessions.pop(sid, None)
        if session is not None:
            metrics.FOLLOWERS.labels(kind="socketio").dec()
            await session.close()

    async def trigger_event(self, event: str, *args: Any) -> Any:
        # python-socketio's documented catch-all: the client's events have dashes in their names.
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        session = self.sessions.get(args[0])
        if session is None:
            return None
        data = args[1] if len(args) > 1 else None
        if not isinstance(data, dict):
            await session.send_error(None, "validation_error", f'{event} takes an object: {{"taskId": ...}}')
            return None
        await session.command({**data, "type": event})
        return None


class _OrjsonCodec:
    """orjson in the shape python-socketio's `json=` option asks for (the stdlib's dumps and
    loads): every event is one packet to encode, per subscriber."""

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(text)


def socketio_server() -> socketio.AsyncServer:
    # Any origin: the key authenticates, never a cookie (no staff sessions here).
    server = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", json=_OrjsonCodec)
    server.register_namespace(TaskNamespace())
    return server


def socketio_app(other: Any) -> socketio.ASGIApp:
    """The service's ASGI app: Socket.IO at /socket.io/, everything else to `other`."""
    return socketio.ASGIApp(socketio_server(), other_asgi_app=other, socketio_path="socket.io")
