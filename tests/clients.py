"""Real protocol clients for end-to-end tests: HTTP (httpx), SSE and WebSocket."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.sync.client import connect

API = "/mageagent/api/v1"


@dataclass
class SseEvent:
    id: int | None
    event: str | None
    data: dict[str, Any]


@dataclass
class SseRead:
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False  # the server ended the response


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent | str]:
    """SSE frames from a line iterator: events, or comment strings."""
    current: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SseEvent(int(current["id"]) if "id" in current else None, current.get("event"),
                               json.loads("\n".join(data)))
            current, data = {}, []
        elif line.startswith(":"):
            yield line[1:].strip()
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                current[name] = value


class Client:
    def __init__(self, base_url: str, key: str | None) -> None:
        self.base_url = base_url
        self.key = key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=90)

    def create(self, prompt: str, **fields: Any) -> dict[str, Any]:
        headers = fields.pop("headers", {})
        response = self.http.post(f"{API}/tasks", json={"prompt": prompt, **fields}, headers=headers)
        assert response.status_code in (200, 202), response.text
        return response.json()

    def get(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"{API}/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_terminal(self, task_id: str, timeout: float = 90) -> dict[str, Any]:
        """Follow the task's SSE stream to its end, then return the Task object."""
        self.sse(task_id, timeout=timeout)
        task = self.get(task_id)
        assert task["status"] in ("completed", "failed", "cancelled"), task
        return task

    def events(self, task_id: str, after: int = 0) -> dict[str, Any]:
        response = self.http.get(f"{API}/tasks/{task_id}/events", params={"after": after})
        assert response.status_code == 200, response.text
        return response.json()

    def sse(self, task_id: str, *, after: int | None = None, last_event_id: int | None = None,
            stop_after: int | None = None, timeout: float = 90, token_in_query: bool = False) -> SseRead:
        """Read the SSE stream until it ends (after `done`) or `stop_after` events arrived."""
        headers = {}
        params: dict[str, Any] = {}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        if after is not None:
            params["after"] = after
        client = self.http
        if token_in_query:
            client = httpx.Client(base_url=self.base_url, timeout=90)
            params["token"] = self.key
        read = SseRead()
        deadline = time.monotonic() + timeout
        with client.stream("GET", f"{API}/tasks/{task_id}/stream", headers=headers, params=params) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            for item in parse_sse(response.iter_lines()):
                if isinstance(item, str):
                    read.comments.append(item)
                else:
                    read.events.append(item)
                    if stop_after is not None and len(read.events) >= stop_after:
                        return read
                assert time.monotonic() < deadline, "the stream did not end in time"
            read.ended = True
        return read

    def ws_url(self, path: str) -> str:
        return self.base_url.replace("http://", "ws://") + path

    def ws_task(self, task_id: str, after: int = 0, timeout: float = 90) -> list[dict[str, Any]]:
        """Every frame of the per-task WebSocket until the server closes it."""
        frames = []
        with connect(self.ws_url(f"{API}/tasks/{task_id}/ws?after={after}"),
                     additional_headers={"Authorization": f"Bearer {self.key}"}, open_timeout=10) as ws:
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    frames.append(json.loads(ws.recv(timeout=deadline - time.monotonic())))
            except Exception as exc:
                if exc.__class__.__name__ != "ConnectionClosedOK":
                    raise
        return frames


def answer_from_chunks(events: list[dict[str, Any]]) -> str:
    """The contract's invariant: chunks after the last reset make the answer."""
    parts: list[str] = []
    for event in events:
        if event["type"] == "reset":
            parts.clear()
        elif event["type"] == "chunk":
            parts.append(event["content"])
    return "".join(parts)


def tokens(n: int) -> str:
    return "".join(f"tok{i} " for i in range(n))


def sim(**directive: Any) -> str:
    return f"[[sim {json.dumps(directive)}]]"


def wait_for(check: Any, what: str, timeout: float = 90.0) -> Any:
    """Poll `check` until it returns something truthy (and return that), failing after
    `timeout` seconds with `what` in the message: for state no event announces."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found
