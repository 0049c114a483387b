"""The MageAgent task API over HTTP: tasks, and their events followed over SSE with exact
resume (every event once, in order, across dropped connections)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

API = "/mageagent/api/v1"
TERMINAL = ("completed", "failed", "cancelled")
DEFAULT_URL = "http://127.0.0.1:8080"


class MageAgentError(Exception):
    """An answer in the API's error contract (`{"error": {"code", "message", "details"}}`),
    or a service that could not be reached (`code` "unreachable", `status` None)."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> MageAgentError:
        try:
            error = response.json()["error"]
            return cls(error["code"], error["message"], status=response.status_code, details=error.get("details"))
        except (ValueError, KeyError, TypeError):
            return cls("http_error", response.text[:200] or response.reason_phrase, status=response.status_code)


# Answers worth another try when following: the service is busy or restarting.
_RETRYABLE = (429, 502, 503, 504)


class MageAgent:
    """A client of one MageAgent service with one API key.

    `base_url` defaults to $MAGEAGENT_URL (else http://127.0.0.1:8080), `api_key` to
    $MAGEAGENT_API_KEY. Pass `http` to use your own httpx.Client (its base URL and
    headers are then yours to set)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 30.0, reconnect_delay: float = 1.0, max_reconnect_delay: float = 15.0,
                 http: httpx.Client | None = None) -> None:
        self.base_url = (base_url or os.environ.get("MAGEAGENT_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("MAGEAGENT_API_KEY")
        if not key and http is None:
            raise MageAgentError("authentication_failed", "an API key is required (api_key= or $MAGEAGENT_API_KEY)")
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.http = http or httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"},
                                         timeout=timeout)

    def __enter__(self) -> MageAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            url = path if "://" in path or path.startswith(API) else f"{API}{path}"
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise MageAgentError("unreachable", f"{self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise MageAgentError.from_response(response)
        body: dict[str, Any] = response.json()
        return body

    def submit(self, prompt: str | None = None, *, idempotency_key: str | None = None,
               **fields: Any) -> dict[str, Any]:
        """POST /tasks: the queued Task. `fields` are the body's other fields (model, context,
        tools, stream, metadata, priority, messages, max_tokens, ...)."""
        body = {"prompt": prompt, **fields} if prompt is not None else fields
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/tasks", json=body, headers=headers)

    def get(self, task_id: str) -> dict[str, Any]:
        return self._request("GET", f"/tasks/{task_id}")

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a queued or running task (again: the same answer); a finished one is a 409."""
        return self._request("POST", f"/tasks/{task_id}/cancel")

    def list(self, *, limit: int | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
        """The caller's tasks, newest first, across pages; filters: status, model,
        created_after, created_before."""
        params: dict[str, Any] | None = {k: v for k, v in filters.items() if v is not None}
        url: str | None = "/tasks"
        seen = 0
        while url is not None:
            page = self._request("GET", url, params=params)
            for task in page["results"]:
                yield task
                seen += 1
                if limit is not None and seen >= limit:
                    return
            # `next` carries the filters and the cursor (params, even empty, would replace them)
            url, params = page.get("next"), None

    def events(self, task_id: str, *, after: int = 0, reconnect_for: float | None = None) -> Iterator[dict[str, Any]]:
        """Every event of the task past `after`, once each and in order, ending with `done`.

        A dropped connection or a busy service (429/503) is not an error: the stream is
        opened again with Last-Event-ID, the last seq received, so nothing is missed or
        repeated. `reconnect_for` bounds the seconds spent reconnecting without receiving an
        event (None: without bound); past it the last error is raised."""
        return self._events(task_id, after=after, reconnect_for=reconnect_for, deadline=None)

    def _events(self, task_id: str, *, after: int, reconnect_for: float | None,
                deadline: float | None) -> Iterator[dict[str, Any]]:
        position = after
        delay = self.reconnect_delay
        failing_since: float | None = None
        while True:
            try:
                for event in self._stream_once(task_id, position, deadline):
                    if event["seq"] <= position:
                        continue  # defensive: the service never repeats one
                    position = event["seq"]
                    failing_since, delay = None, self.reconnect_delay
                    yield event
                    if event["type"] == "done":
                        return
                problem = MageAgentError("stream_ended", "the stream ended before done")
            except _Retry as retry:
                problem, delay = retry.error, max(delay, retry.wait)
            except (httpx.TransportError, SSEError) as exc:
                problem = MageAgentError("unreachable", f"{self.base_url}: {exc!r}")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"task {task_id} did not finish in time")
            failing_since = failing_since or now
            if reconnect_for is not None and now - failing_since >= reconnect_for:
                raise problem
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - now)))
            delay = min(delay * 2, self.max_reconnect_delay)

    def _stream_once(self, task_id: str, position: int, deadline: float | None) -> Iterator[dict[str, Any]]:
        headers = {"Last-Event-ID": str(position), "Accept": "text/event-stream"}
        # No read timeout unless waiting has a deadline: the service pings an idle stream
        # every 15 s, and a task may wait in its queue far longer than any timeout.
        read = None if deadline is None else max(deadline - time.monotonic(), 0.01)
        with connect_sse(self.http, "GET", f"{API}/tasks/{task_id}/stream", headers=headers,
                         timeout=httpx.Timeout(self.http.timeout.connect, read=read)) as source:
            response = source.response
            if response.status_code in _RETRYABLE:
                response.read()
                raise _Retry(MageAgentError.from_response(response), _retry_after(response))
            if response.status_code >= 400:
                response.read()
                raise MageAgentError.from_response(response)
            for sse in source.iter_sse():
                if sse.retry is not None:
                    self.reconnect_delay = sse.retry / 1000
                yield sse.json()

    def text(self, task_id: str, *, after: int = 0) -> Iterator[str]:
        """The answer's pieces as they stream. A retry after a provider error starts the
        answer again: then this raises AnswerRestarted, whose `attempt` says which."""
        for event in self.events(task_id, after=after):
            if event["type"] == "chunk":
                yield event["content"]
            elif event["type"] == "reset":
                raise AnswerRestarted(event.get("attempt"))

    def wait(self, task_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The finished Task (completed, failed or cancelled), following its stream to `done`.
        TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        task = self.get(task_id)
        if task["status"] in TERMINAL:
            return task
        done: dict[str, Any] = {}
        for event in self._events(task_id, after=0, reconnect_for=None, deadline=deadline):
            if event["type"] == "done":
                done = event
            elif deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} did not finish in {timeout} s")
        task = self.get(task_id)
        if task["result"] is None and done.get("result") is not None:
            # A cancelled task's partial result reaches its row just after `done`: the same one.
            task["result"] = done["result"]
        return task

    def run(self, prompt: str, **fields: Any) -> dict[str, Any]:
        """Submit, then wait: the finished Task."""
        return self.wait(self.submit(prompt, **fields)["id"])


class AnswerRestarted(Exception):
    def __init__(self, attempt: int | None) -> None:
        super().__init__(f"the answer restarts (attempt {attempt})")
        self.attempt = attempt


class _Retry(Exception):
    def __init__(self, error: MageAgentError, wait: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0
