"""GET /tasks/{id}/stream: Server-Sent Events over the task's event log."""

from __future__ import annotations

from collections.abc import AsyncIterator

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse

from mageagent.errors import DomainError, error_response
from mageagent.tenancy.access import tenant_from

from . import events, selectors
from .follow import follow

NAMELESS = ("chunk", "done")  # seed clients read these with EventSource.onmessage


def sse_frame(raw: str) -> bytes:
    seq, kind = events.peek(raw)
    if kind in NAMELESS:
        return f"id: {seq}\ndata: {raw}\n\n".encode()
    return f"id: {seq}\nevent: {kind}\ndata: {raw}\n\n".encode()


async def _frames(task_id: str, after: int) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n: connected\n\n"
    async for raw in follow(task_id, after, idle_s=settings.MAGEAGENT["SSE_PING_S"]):
        yield b": ping\n\n" if raw is None else sse_frame(raw)


def _position(request: HttpRequest) -> int:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"not an event sequence number: {raw!r}") from None
    if value < 0:
        raise ValueError("the event position must be >= 0")
    return value


async def task_stream_view(request: HttpRequest, task_id: str) -> HttpResponseBase:
    headers = {k.lower(): v for k, v in request.headers.items()}
    tenant = await tenant_from(headers, request.GET.get("token"), await request.auser())
    if tenant is None:
        return error_response("authentication_failed", "an API key is required", 401)
    try:
        after = _position(request)
    except ValueError as exc:
        return error_response("validation_error", str(exc), 400)
    try:
        task = await database_sync_to_async(selectors.task_get)(tenant=tenant, task_id=task_id)
    except DomainError as exc:
        return error_response(exc.code, exc.message, exc.status)
    response = StreamingHttpResponse(_frames(str(task.id), after), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
