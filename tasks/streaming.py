"""GET /tasks/{id}/stream: Server-Sent Events over the task's event log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from mageagent import metrics
from mageagent.errors import DATABASE_DOWN, DomainError, domain_error_response, error_response, unavailable_for
from mageagent.handlers import stream_db
from mageagent.tenancy.access import tenant_from
from mageagent.tenancy.throttling import rate_limited, stream_open_wait

from . import events, selectors
from .follow import LogUnavailable, follow, parse_position

logger = logging.getLogger(__name__)

NAMELESS = ("chunk", "done")  # seed clients read these with EventSource.onmessage


def sse_frame(raw: str) -> bytes:
    seq, kind = events.peek(raw)
    if kind in NAMELESS:
        return f"id: {seq}\ndata: {raw}\n\n".encode()
    return f"id: {seq}\nevent: {kind}\ndata: {raw}\n\n".encode()


async def _frames(task_id: str, after: int) -> AsyncIterator[bytes]:
    # The comment sends the headers at once (a client resuming at the log's end waits for
    # nothing else). `retry:` rides on the first event: a block with a field but no data is
    # an event with empty data to httpx-sse and the openai SDK, though not to browsers.
    followers = metrics.FOLLOWERS.labels(kind="sse")
    followers.inc()  # counted while the response's body is served (a client gone closes it)
    try:
        yield b": connected\n\n"
        retry = b"retry: 1000\n"
        async for raw in follow(task_id, after, idle_s=settings.MAGEAGENT["SSE_PING_S"]):
            if raw is None:
                yield b": ping\n\n"
            elif retry:
                yield retry + sse_frame(raw)
                retry = b""
            else:
                yield sse_frame(raw)
    except LogUnavailable as exc:
        # The response ends: EventSource reconnects with Last-Event-ID and resumes exactly
        # where it was.
        logger.warning("ending the stream of task %s: %s", task_id, exc)
        yield b": the event log is unavailable; reconnect with Last-Event-ID\n\n"
    finally:
        followers.dec()


def _position(request: HttpRequest) -> int:
    after = parse_position(request.GET.get("after") or "0")  # malformed is a 400 even when the header wins
    header = request.headers.get("Last-Event-ID")
    return parse_position(header) if header else after


@csrf_exempt  # key-authenticated like the DRF views; a wrong method is a JSON 405, not a CSRF page
async def task_stream_view(request: HttpRequest, task_id: str) -> HttpResponseBase:
    # A plain view: DRF's exception handler does not cover it, and with DEBUG on Django would
    # answer an error with its HTML debug page, so every error is rendered here.
    if request.method not in ("GET", "HEAD"):
        response = error_response("method_not_allowed", f'method "{request.method}" not allowed', 405)
        response["Allow"] = "GET, HEAD"
        return response
    for attempt in (1, 2):
        try:
            return await _stream(request, task_id)
        except Exception as exc:
            down = unavailable_for(exc)
            if down is None:
                logger.exception("unhandled error opening the stream of task %s", task_id)
                return error_response("internal_error", "internal server error", 500)
            if attempt == 1 and isinstance(exc, DATABASE_DOWN):
                # A browser's EventSource gives up for good on a 503: a connection the
                # database dropped is tried once more (unavailable_for has just had the
                # pool replace its dead connections).
                continue
            logger.warning("%s opening the stream of task %s: %r", down.message, task_id, exc)
            return domain_error_response(down)
    raise AssertionError("unreachable")


async def _stream(request: HttpRequest, task_id: str) -> HttpResponseBase:
    headers = {k.lower(): v for k, v in request.headers.items()}
    tenant = await tenant_from(headers, request.GET.get("token"), auser=request.auser)
    if tenant is None:
        return error_response("authentication_failed", "an API key is required", 401)
    wait = await stream_open_wait(tenant)
    if wait > 0:
        return domain_error_response(rate_limited(wait))
    try:
        after = _position(request)
    except ValueError as exc:
        return error_response("validation_error", str(exc), 400)
    try:
        task = await stream_db(selectors.task_get)(tenant=tenant, task_id=task_id)
    except DomainError as exc:
        return domain_error_response(exc)
    response = StreamingHttpResponse(_frames(str(task.id), after), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
