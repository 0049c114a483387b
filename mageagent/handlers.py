"""The ASGI entry for plain HTTP: Django's handler with its request path run in one thread,
and request bodies capped before they are read.

Under ASGI, Django runs each sync middleware's process_request/process_response and the
sync DRF views through their own `sync_to_async` hop: about 16 thread hand-offs per
API request, which cost more CPU than the view itself (BENCHMARKS.md, "Figures behind the
design"). Every view on the API path is sync, so this
handler builds the middleware chain in sync mode and enters it with one hop. The few
async views (the SSE stream) still work: Django's sync path runs them with
`async_to_sync`, and they return a streaming response at once, whose body the event loop
then serves.

Django's own handler spools any body, however large, to a temporary file before a view
can refuse it; here a declared or streamed body over MAX_REQUEST_BYTES gets its 413 first.

Admission: past WEB_THREADS requests running and WEB_QUEUE_MAX more waiting for a thread,
an API request is answered 503 `unavailable` with Retry-After at once, on the loop, instead
of joining a queue that only grows. Offered twice what it could serve, the web used to
queue POSTs for seconds while its event loop, starved of the GIL, let WebSocket handshakes
pass daphne's 5 s limit. Health checks, cancels, SSE opens, knowledge searches and the
admin run on their own threads and are never refused.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import IO, Any, TypeVar

import orjson
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.signals import got_request_exception
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from .errors import (
    DATABASE_DOWN,
    UNAVAILABLE_RETRY_AFTER_S,
    Unavailable,
    domain_error_response,
    error_body_for,
    unavailable_for,
)

logger = logging.getLogger(__name__)
Scope = dict[str, Any]
T = TypeVar("T")


# Larger bodies some paths take, registered by the apps that serve them (a prompt as long as
# the largest enabled model's context window: tasks/apps.py, openai_api/apps.py). A limit may
# read the database (the model catalog), so the handler asks for it from a thread and keeps
# the answer BODY_LIMIT_CACHE_S.
_path_limits: list[tuple[tuple[str, ...], Callable[[], int]]] = []
BODY_LIMIT_CACHE_S = 30.0


def body_limit_register(*, paths: tuple[str, ...], limit: Callable[[], int]) -> None:
    """Let POSTs to these exact paths have bodies up to `limit()` bytes (more than the default)."""
    _path_limits.append((paths, limit))


def max_request_bytes(path: str = "") -> int:
    """The largest body an endpoint accepts: the largest upload plus the multipart envelope,
    or what the path's app registered when larger."""
    knobs = settings.MAGEAGENT
    largest = max(knobs["FILES_MAX_BYTES"], knobs["KNOWLEDGE_MAX_BYTES"], knobs["MAX_BODY_BYTES"],
                  *(limit() for paths, limit in _path_limits if path in paths))
    return largest + 64 * 1024


_limits_cache: dict[str, tuple[float, int]] = {}


async def _request_limit(scope: Scope) -> int | Unavailable:
    path = scope.get("path", "")
    if scope.get("method") != "POST" or not any(path in paths for paths, _ in _path_limits):
        return max_request_bytes()
    now = time.monotonic()
    hit = _limits_cache.get(path)
    if hit is None or hit[0] < now:
        try:
            limit = await stream_db(max_request_bytes)(path)
        except Exception as exc:
            # The limit follows the catalog, which lives in the database. With the database
            # down, the last limit known stands (the request then meets the outage where
            # every request does, as the contract's 503); with none known, answer that here.
            down = unavailable_for(exc)
            if down is None:
                raise
            if hit is None:
                return down
            limit = hit[1]
            logger.warning("body limit of %s kept at %d bytes: %r", path, limit, exc)
            _limits_cache[path] = (now + UNAVAILABLE_RETRY_AFTER_S, limit)
            return limit
        hit = _limits_cache[path] = (now + BODY_LIMIT_CACHE_S, limit)
    return hit[1]


def protocol_limit() -> int:
    """The body limit the HTTP protocol enforces before a body is read (mageagent/bodylimit.py),
    without I/O: the default limit, or the largest a path was given when it was last looked
    up. Each path's own limit is applied by the handler below, before Django reads a body."""
    return max([max_request_bytes(), *(limit for _, limit in _limits_cache.values())])


def too_large_body(limit: int, path: str = "") -> bytes:
    return orjson.dumps(error_body_for(path, "payload_too_large", f"the request body is larger than the {limit}-byte "
                                       "limit", 413, {"max_bytes": limit}))


def _declared_length(scope: Mapping[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Any, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    """An error answered before Django sees the request, and the connection closed."""
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _send_too_large(send: Any, limit: int, path: str = "") -> None:
    await _send_error(send, 413, too_large_body(limit, path))


async def _send_unavailable(send: Any, down: Unavailable, path: str) -> None:
    body = orjson.dumps(error_body_for(path, down.code, down.message, down.status, down.details))
    await _send_error(send, down.status, body, down.headers)


@cache
def _request_threads() -> ThreadPoolExecutor:
    # Its own pool: the loop's default one has min(32, cores + 4) threads, 6 here. Few
    # threads, because they share one GIL with the event loop: under a burst of
    # `POST /tasks`, 32 runnable threads handed the GIL round and each request cost more
    # CPU than with 8. And the loop, which takes the GIL back after every socket write and
    # every poll, waits behind each runnable thread: offered more than the machine serves,
    # followers of accepted tasks wait longer for their first event the more threads there
    # are, for the same throughput (BENCHMARKS.md, "Figures behind the design"). Nothing on these threads waits
    # on anything slower than PostgreSQL and Redis (see _executor_for).
    return ThreadPoolExecutor(settings.MAGEAGENT["WEB_THREADS"], thread_name_prefix="http")


STREAM_DB_THREADS = 4


@cache
def _stream_db_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(STREAM_DB_THREADS, thread_name_prefix="stream-db")


def stream_db(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`fn` as a coroutine on threads of its own, for the database calls of following a
    task over SSE or WebSocket: the key's lookup on a cache miss, fetching the task to
    subscribe to or cancel, reading a finished task whose log expired.

    Called from the event loop, channels' `database_sync_to_async` sends every call of the
    process, one after another, to the single thread-sensitive thread. Offered twice what
    the machine serves, subscriptions queued there for seconds and daphne refused the
    handshakes still open after 5 s. Not the API's threads either: a subscription would
    wait behind the POSTs admitted before it (the followers of tasks already accepted come
    before new work), and an SSE view, which runs in one of the never-refused threads,
    never waits for a thread of the pool it holds one of."""
    return database_sync_to_async(fn, thread_sensitive=False, executor=_stream_db_threads())


@cache
def waiting_threads() -> ThreadPoolExecutor:
    """Threads for requests that mostly wait (and health checks, which must answer whatever
    the API threads are doing): a cancel waits up to CANCEL_WAIT_S for its
    worker to close the stream, and staff pages run the admin's heavier queries. They get
    a pool of their own so that they never hold up the API's fast path."""
    return ThreadPoolExecutor(settings.MAGEAGENT["WEB_WAIT_THREADS"], thread_name_prefix="http-wait")


# Health checks answer even when every API thread is busy and the queue is full.
_HEALTH = ("/healthz", "/readyz")
RETRY_AFTER_S = 1


def _executor_for(request: HttpRequest) -> ThreadPoolExecutor:
    path = request.path_info
    if (path.startswith("/admin/") or path in _HEALTH or (request.method == "POST" and path.endswith("/cancel"))
            or path.endswith(("/stream", "/knowledge/search"))):
        # Never refused: health, cancels, the admin, and opening a task's SSE stream (the
        # followers of tasks already accepted come before new work; a browser's
        # EventSource gives up for good on a 503). An open holds its thread only for the
        # key's lookup and the task's fetch: the stream itself is served by the loop.
        # A knowledge search may wait on a GraphRAG service (up to GRAPHRAG_TIMEOUT_S).
        return waiting_threads()
    return _request_threads()


def _overloaded(admitted: int, path: str = "") -> JsonResponse:
    response = JsonResponse(error_body_for(path, "unavailable", "the server is at capacity; retry after the "
                                           "Retry-After seconds", 503,
                                           {"retry_after_s": RETRY_AFTER_S, "requests_admitted": admitted}),
                            status=503)
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response


_UNAVAILABLE = "mageagent.unavailable"  # request.META key: the 503 of a dependency found down


def _note_dependency_down(sender: object, request: HttpRequest | None = None, **kwargs: Any) -> None:
    # Django turns an exception that escapes a view or a middleware into its 500 (an HTML
    # debug page with DEBUG on) and sends this signal while handling it: remember a
    # dependency that was down, so that _serve answers 503 instead.
    down = unavailable_for(sys.exc_info()[1] or Exception())
    if down is not None and request is not None:
        request.META[_UNAVAILABLE] = down


got_request_exception.connect(_note_dependency_down)


def _close_stale_connections() -> None:
    try:
        close_old_connections()
    except DATABASE_DOWN:
        pass  # a connection the database dropped: the pool replaces it; the answer stands


class DeferredResponse(HttpResponse):
    """What a view returns when its answer must wait for something (a task to finish)
    without holding a request thread: the handler awaits `resolve()` on the event loop and
    sends what it gives. A client that disconnects meanwhile cancels the wait."""

    def __init__(self, resolve: Callable[[], Awaitable[HttpResponseBase]]) -> None:
        super().__init__(status=202)
        self.resolve = resolve


class MageAgentASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        # Django enters a ThreadSensitiveContext per request, whose first thread-sensitive
        # call (the request signals, response.close) starts a new OS thread that is joined
        # at the end: two thread starts per request for work that takes microseconds.
        # Without it those calls share the process's one thread-sensitive thread, as the
        # WebSocket consumers' do; the request itself runs on a pool thread (below).
        if scope["type"] != "http":
            raise ValueError(f"this handler serves HTTP only, not {scope['type']}")
        await self.handle(scope, receive, send)

    admitted = 0  # API requests given to the request threads and not answered yet (loop thread only)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        # The whole request runs in one thread, so it need not be "thread sensitive"
        # (under Django's per-request context that was a new OS thread per request). The
        # loop's pool threads are reused instead, requests run side by side as under a
        # threaded WSGI server, and one that waits (a cancel waiting for its worker) holds
        # up no other.
        response = await self._threaded_response(request)
        if isinstance(response, DeferredResponse):
            return await response.resolve()
        return response

    async def _threaded_response(self, request: HttpRequest) -> HttpResponseBase:
        executor = _executor_for(request)
        serve = sync_to_async(self._serve, thread_sensitive=False, executor=executor)
        if executor is not _request_threads():
            return await serve(request)
        knobs = settings.MAGEAGENT
        if self.admitted >= knobs["WEB_THREADS"] + knobs["WEB_QUEUE_MAX"]:
            return _overloaded(self.admitted, request.path_info)
        self.admitted += 1
        try:
            return await serve(request)
        finally:
            self.admitted -= 1

    def _serve(self, request: HttpRequest) -> HttpResponseBase:
        try:
            # Django's request_started/finished signals close stale connections in the
            # thread they run in, which is not this one: do it here, as its WSGI handler
            # would.
            close_old_connections()
            response = self.get_response(request)
        except Exception as exc:
            down = unavailable_for(exc)
            if down is None:
                raise
            logger.warning("%s serving %s: %r", down.message, request.path, exc)
            return domain_error_response(down)
        finally:
            _close_stale_connections()
        down = request.META.get(_UNAVAILABLE)
        if response.status_code == 500 and down is not None:
            response.close()
            return domain_error_response(down)
        return response

    def create_request(self, scope: Mapping[str, Any],
                       body_file: IO[bytes]) -> tuple[ASGIRequest, None] | tuple[None, HttpResponseBase]:
        # A chunked body comes without a Content-Length, and DRF reads a request without
        # one as having no body: a chunked POST /tasks was "prompt: This field is
        # required". The body is read by now (within the limit): declare its length.
        if _declared_length(scope) is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            size = body_file.seek(0, 2)
            body_file.seek(0)
            if size:
                scope = {**scope, "headers": [*scope.get("headers", ()), (b"content-length", str(size).encode())]}
        return super().create_request(scope, body_file)

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        limit = await _request_limit(scope)
        if isinstance(limit, Unavailable):
            await _send_unavailable(send, limit, scope.get("path", ""))
            return
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _send_too_large(send, limit, scope.get("path", ""))
            return
        received = 0
        overflowed = False

        async def capped_receive() -> dict[str, Any]:
            # A body without a (truthful) Content-Length is cut off where it passes the limit.
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    return {"type": "http.disconnect"}
            return message

        await super().handle(scope, capped_receive, send)
        if overflowed:
            await _send_too_large(send, limit, scope.get("path", ""))
