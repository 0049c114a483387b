"""Oversized requests are refused in daphne's HTTP protocol, before they are read.

daphne hands a request to the ASGI application only once Twisted has buffered its whole
body, and then queues all of it at once: a 300 MB POST sat in the web process's memory
before any view could answer 413, and a `Content-Length: 999999999999` with no body was
never answered at all. This request class (daphne's, with Twisted's `gotLength` and
`handleContentChunk` hooks) answers 413 `payload_too_large` as soon as the declared
length is known, and cuts a chunked body off where it passes the limit, so the memory a
request can take is bounded by the limit. `install()` makes daphne's HTTP factory build
its requests from this class; mageagent.asgi calls it, which daphne imports before it
starts listening. The ASGI handler (mageagent/handlers.py) keeps its own check for other
servers.

Headers past Twisted's limits (16 KiB in one line or in all) used to get a bare
"400 Bad Request" without a body, or, for one long line, a closed connection and no
answer at all: they get 431 `headers_too_large` in the contract's shape.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
from daphne import http_protocol
from twisted.web import http

from .handlers import protocol_limit, too_large_body


class LimitedWebRequest(http_protocol.WebRequest):  # type: ignore[misc]  # daphne has no type hints
    refused = False
    received = 0

    def gotLength(self, length: int | None) -> None:
        self.limit = protocol_limit()
        if length is not None and length > self.limit:
            self.refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.received += len(data)
        if self.received > self.limit:
            self.refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.refused:
            super().requestReceived(command, path, version)

    def refuse(self) -> None:
        """Answer 413 on the connection and close it: the application never sees the request."""
        self.refused = True
        self.content = io.BytesIO()  # what daphne and Twisted close when the connection goes
        # No "100 Continue" for a body that will not be read (Twisted sends it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        _answer_and_close(self.channel.transport, b"413 Payload Too Large", too_large_body(self.limit))


def _answer_and_close(transport: Any, status: bytes, body: bytes) -> None:
    transport.write(b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n%s" % (status, len(body), body))
    transport.loseConnection()


HEADERS_TOO_LARGE = orjson.dumps({"error": {
    "code": "headers_too_large",
    "message": f"the request line and headers are limited to {http.HTTPChannel.totalHeadersSize} bytes",
    "details": {"max_bytes": http.HTTPChannel.totalHeadersSize}}})


class LimitedHTTPChannel(http.HTTPChannel):
    def lineReceived(self, line: bytes) -> None:
        # Twisted's own check (the same sum, just after this) answers a bare 400.
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.headers_too_large()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.headers_too_large()  # LineReceiver's default closes the connection unanswered

    def headers_too_large(self) -> None:
        self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore[method-assign]
        _answer_and_close(self.transport, b"431 Request Header Fields Too Large", HEADERS_TOO_LARGE)


def _channel(factory: Any) -> Any:
    # What Twisted's HTTPFactory.protocol builds, with our channel inside its wrapper (the
    # wrapper switches to HTTP/2 when TLS negotiates it).
    return http._GenericHTTPChannelProtocol(LimitedHTTPChannel())


def install() -> None:
    """Have daphne's HTTP factory build our channels and requests (it sets the channel's
    requestFactory from the module's name)."""
    http_protocol.WebRequest = LimitedWebRequest
    http_protocol.HTTPFactory.protocol = _channel
