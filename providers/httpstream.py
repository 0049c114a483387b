"""A lean HTTP/1.1 client for streamed POSTs: the provider's side of every token.

aiohttp spends more of the worker's event-loop CPU per streamed token (its StreamReader,
a read timer re-armed on every read, the glue around its parser) than this client
(BENCHMARKS.md, "Figures behind the design"). httptools (llhttp, the parser uvicorn uses) does
the HTTP parsing and chunked decoding; what is here is the connection handling around it:

- one read per `data_received`: the body bytes of a read are handed to the reader at once,
  with one wake-up, however many SSE events they hold;
- the idle-read timeout is one timer per connection that re-arms itself only when it
  fires, not a timer per read;
- keep-alive connections are pooled per (scheme, host, port) on the loop that made them;
  a reused connection the server had closed before answering is retried once, fresh;
- closing the stream before its end (a cancel, an error) aborts the connection, so the
  provider sees its stream closed at once.

It speaks what OpenAI-compatible servers need: POST with a body, plain or TLS, chunked,
Content-Length or close-delimited responses. No proxies, redirects or compression
(`Accept-Encoding: identity`), as the aiohttp session it replaces had none.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

# How many seconds the reader can wait before it needs the next read (0: read at once).
Pace = Callable[[], float]

MAX_ERROR_BODY = 64 * 1024
KEEPALIVE_S = 30.0  # an idle connection older than this is closed, not reused


class StreamError(Exception):
    """The connection failed. `answered`: response bytes had arrived, so the request reached
    the server (an interrupted stream, not an unreachable one)."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class ConnectError(StreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, answered=False)


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; the last value wins


class _Connection(asyncio.Protocol):
    def __init__(self, key: tuple[str, str, int], read_timeout: float) -> None:
        self.key, self.read_timeout = key, read_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.headers_done = False
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.received = False
        self.waiter: asyncio.Future[None] | None = None
        self.last_read = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.held: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            self.error = StreamError("unexpected protocol upgrade", answered=True)
        except httptools.HttpParserError as exc:
            self.error = StreamError(f"malformed HTTP response: {exc}", answered=True)
        if self.error is not None:
            self._abort()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self.held is not None:
            self.held.cancel()
            self.held = None
        if exc is None and self.headers_done and not self.complete and self._close_delimited():
            self.complete = True  # a body without a length ends with the connection
        if not self.complete and self.error is None and not self.idle:
            self.error = StreamError(f"connection closed: {exc}" if exc else "connection closed by the server",
                                     answered=self.received)
        self._wake()

    def _close_delimited(self) -> bool:
        assert self.response is not None
        headers = self.response.headers
        return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()

    # --- httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.response = Response(self.parser.get_status_code())

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is done
        self._cancel_timer()

    # --- used by the stream
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _arm_timer(self) -> None:
        self.timer = self.loop.call_at(self.last_read + self.read_timeout, self._check_timeout)

    def hold(self, delay: float) -> None:
        """Leave the socket unread for `delay` seconds: what arrives meanwhile waits in the
        kernel and comes in as one read, however many events it holds."""
        if self.transport is None or self.closed or self.complete or self.held is not None:
            return
        self.transport.pause_reading()
        self.held = self.loop.call_later(delay, self._unhold)

    def _unhold(self) -> None:
        self.held = None
        self.last_read = self.loop.time()  # the read timeout counts from here, not from the pause
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _check_timeout(self) -> None:
        self.timer = None
        if self.complete or self.closed:
            return
        if self.held is not None:
            self._arm_timer()
            return
        if self.loop.time() - self.last_read >= self.read_timeout:
            self.error = TimeoutError(f"no data from the provider for {self.read_timeout:g} s")
            self._abort()
            self._wake()
        else:
            self._arm_timer()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def wait(self, hold: float = 0.0) -> None:
        """Until the next read (or the end, or an error), unless one is already at hand.
        `hold`: seconds the caller can do without reading (see Stream.reads)."""
        if self.chunks or self.complete or self.error is not None:
            return
        if hold > 0.002:  # shorter holds would cost more timers than they save reads
            self.hold(hold)
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take(self) -> bytes:
        chunks, self.chunks = self.chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def reusable(self) -> bool:
        return self.complete and not self.closed and self.error is None and self.keep_alive


class Pool:
    """Keep-alive connections of one event loop, at most `limit` in use at once."""

    def __init__(self, *, limit: int, connect_timeout: float, read_timeout: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.slots = asyncio.Semaphore(limit)
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl = ssl_context

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(key, self.read_timeout), host, port,
                    ssl=self._ssl if scheme == "https" else None)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def _reuse(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.loop.time() - conn.idle_since > KEEPALIVE_S:
                conn._abort()
            elif not conn.closed:
                conn.idle = False
                conn._reset()
                return conn
        return None

    def _release(self, conn: _Connection) -> None:
        if conn.reusable():
            conn.idle, conn.idle_since = True, conn.loop.time()
            self.idle.setdefault(conn.key, []).append(conn)
        else:
            conn._abort()

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn._abort()
        self.idle.clear()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Stream:
        """Send the request and wait for the response's head. The caller must close the
        stream (`async with`): a stream closed before its end aborts the connection."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConnectError(f"unsupported URL: {url}")
        default_port = 443 if scheme == "https" else 80
        port = parts.port or default_port
        key = (scheme, parts.hostname, port)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                 f"Host: {host}{'' if port == default_port else f':{port}'}", f"Content-Length: {len(body)}",
                 "Accept-Encoding: identity", *(f"{k}: {v}" for k, v in headers.items())]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        await self.slots.acquire()
        try:
            conn = await self._send(key, head + body)
        except BaseException:
            self.slots.release()
            raise
        return Stream(self, conn)

    async def _send(self, key: tuple[str, str, int], request: bytes) -> _Connection:
        conn = self._reuse(key)
        if conn is not None:
            try:
                return await self._head(conn, request)
            except StreamError as exc:
                if exc.answered:
                    raise
                # The server closed the idle connection as we reused it: it never saw the
                # request, so it is sent once more on a fresh connection.
        return await self._head(await self._connect(key), request)

    async def _head(self, conn: _Connection, request: bytes) -> _Connection:
        try:
            assert conn.transport is not None
            conn._arm_timer()  # from last_read, set when the connection was made or taken from the pool
            conn.transport.write(request)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
            return conn
        except BaseException:
            conn._abort()
            raise


class Stream:
    def __init__(self, pool: Pool, conn: _Connection) -> None:
        self.pool, self.conn = pool, conn
        assert conn.response is not None
        self.status, self.headers = conn.response.status, conn.response.headers
        self._closed = False

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool._release(self.conn)
            self.pool.slots.release()

    async def reads(self, pace: Pace | None = None) -> AsyncIterator[bytes]:
        """The body, a read at a time, until its end; StreamError or TimeoutError on failure.

        `pace`, asked each time the reader would wait for data: how many seconds it can do
        without. A reader that forwards chunks at most every 100 ms (tasks/runtime/pipeline.py)
        needs the socket read no more often than that: held, the tokens of a window arrive
        as one read, one wake-up and one parse, not one of each per token."""
        conn = self.conn
        while True:
            await conn.wait(pace() if pace is not None else 0.0)
            if conn.chunks:
                yield conn.take()
            elif conn.error is not None:
                raise conn.error
            elif conn.complete:
                return

    async def read(self, limit: int = MAX_ERROR_BODY) -> bytes:
        out = b""
        async for data in self.reads():
            out += data
            if len(out) >= limit:
                return out[:limit]  # the rest is not read: close() aborts the connection
        return out
