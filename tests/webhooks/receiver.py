"""A real HTTP endpoint for webhook deliveries, on 127.0.0.1, that verifies nothing itself:
tests verify what it recorded with the standardwebhooks reference library."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from standardwebhooks import Webhook as Verifier


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    def verified(self, secret: str) -> dict[str, Any]:
        """The payload, after the reference library checked its signature (or raised)."""
        return dict(Verifier(secret).verify(self.body, self.headers))

    @property
    def json(self) -> dict[str, Any]:
        return dict(orjson.loads(self.body))


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: dict[str, list[int]] = {}  # path -> status codes to answer, in order (then 200)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    queue = receiver.answers.get(self.path) or []
                    code = queue.pop(0) if queue else 200
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
