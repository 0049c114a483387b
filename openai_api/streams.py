"""OpenAI's streams derived from a task's event log (tasks/follow.py: replay, then live).

Both are pure functions of the log, so a Responses stream resumed with `starting_after=N`
replays the log from its start and drops the events numbered up to N: what the client gets
is exactly what it would have got, gapless. How a retry shows (the log's `reset`: a new
attempt, or a fallback to another model, restarts the answer):
- Responses: the message being written ends with `status: "incomplete"`
  (response.output_text.done, content_part.done, output_item.done) and the answer starts
  again in a new message item at the next output_index; the final response's `output`
  holds the answer that completed.
- Chat Completions cannot take text back: a chunk with `"mageagent_reset": true` (and an
  empty delta) marks where the answer starts again; clients drop what came before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing, suppress
from typing import Any, TypeVar

import orjson
from django.conf import settings

from mageagent.errors import Conflict
from mageagent.handlers import stream_db
from tasks import selectors
from tasks.follow import follow
from tasks.models import Task, TaskStatus
from tasks.services import task_cancel

from .services import (
    AUTO,
    completion_id,
    function_call_item,
    message_item,
    message_item_id,
    openai_usage,
    response_object,
)

logger = logging.getLogger(__name__)
PING = b": ping\n\n"
T = TypeVar("T")
_cancels: set[asyncio.Future[Any]] = set()


def _cancel_task(task_id: str) -> None:
    task = selectors.task_fetch(task_id)
    if task is not None and not task.is_terminal:
        with suppress(Conflict):
            task_cancel(task=task)


def cancel_in_background(task_id: str) -> None:
    """Cancel the task of a client that went away. Runs on after the request's own
    coroutine was cancelled, so it is not awaited there."""
    future = asyncio.ensure_future(stream_db(_cancel_task)(task_id))
    _cancels.add(future)
    future.add_done_callback(_cancels.discard)


async def task_events(task_id: str, *, ping: bool = True) -> AsyncIterator[dict[str, Any] | None]:
    """The task's events from the first, ending with `done`; None for a heartbeat."""
    async for raw in follow(task_id, 0, idle_s=settings.MAGEAGENT["SSE_PING_S"] if ping else None):
        yield None if raw is None else orjson.loads(raw)


async def wait_done(task_id: str) -> dict[str, Any]:
    async for event in task_events(task_id, ping=False):
        if event is not None and event["type"] == "done":
            return event
    raise RuntimeError("the event log ended without done")  # follow() ends only after done


# --- Chat Completions -------------------------------------------------------------------------
def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class ChatChunks:
    """chat.completion.chunk objects from the log's events, one feed at a time."""

    def __init__(self, task: Task, *, include_usage: bool) -> None:
        self.id, self.created = completion_id(task), int(task.created_at.timestamp())
        self.model = task.model or AUTO
        self.include_usage = include_usage
        self.started = False
        self.tools = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return _sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                     "system_fingerprint": None, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                              "finish_reason": finish}], **extra})

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        kind = event["type"]
        if kind == "chunk":
            return [*self._start(), self._chunk({"content": event["content"]})]
        if kind == "step" and event.get("name") == "model_selected":
            self.model = (event.get("detail") or {}).get("model") or self.model
        elif kind == "reset" and self.started:
            return [self._chunk({}, mageagent_reset=True)]
        elif kind == "tool_call" and event.get("client"):
            call = {"index": self.tools, "id": event["id"], "type": "function",
                    "function": {"name": event["name"], "arguments": event["arguments"]}}
            self.tools += 1
            return [*self._start(), self._chunk({"tool_calls": [call]})]
        elif kind == "done":
            return self._done(event)
        return []

    def _done(self, event: dict[str, Any]) -> list[bytes]:
        if event["status"] != TaskStatus.COMPLETED:
            error = event.get("error") or {"code": "cancelled", "message": "the task was cancelled"}
            return [_sse({"error": {"message": error.get("message"), "type": "server_error",
                                    "param": None, "code": error.get("code")}})]
        result = event.get("result") or {}
        finish = "tool_calls" if result.get("tool_calls") else result.get("finishReason") or "stop"
        out = [*self._start(), self._chunk({}, finish if finish in ("stop", "length", "tool_calls") else "stop")]
        if self.include_usage:
            out.append(_sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                             "model": self.model, "system_fingerprint": None, "choices": [],
                             "usage": openai_usage(result)}))
        return [*out, b"data: [DONE]\n\n"]


async def _translated(task_id: str, feed: Callable[[dict[str, Any]], Iterable[T]],
                      on_leave: Callable[[str], None] | None) -> AsyncGenerator[T | None, None]:
    """What `feed` makes of each of the task's events, live to the end; None for a keep-alive.
    `on_leave`: called with the task id when the client leaves before the end."""
    finished = False
    try:
        async for event in task_events(task_id):
            if event is None:
                yield None
                continue
            finished = event["type"] == "done"
            for out in feed(event):
                yield out
    finally:
        if not finished and on_leave is not None:
            on_leave(task_id)


async def chat_stream(task: Task, *, include_usage: bool) -> AsyncIterator[bytes]:
    """A streamed chat completion; a client that leaves before the end cancels the task."""
    chunks = ChatChunks(task, include_usage=include_usage)
    async with aclosing(_translated(str(task.id), chunks.feed, cancel_in_background)) as frames:
        async for frame in frames:
            yield PING if frame is None else frame


# --- Responses --------------------------------------------------------------------------------
class ResponseEvents:
    """Response stream events (OpenAI's types, sequence_number from 0, gapless) from the log's
    events: a pure function of the log, which is what makes `starting_after` exact."""

    def __init__(self, task: Task) -> None:
        self.task, self.hex = task, task.id.hex
        self.seq = 0
        self.created = False
        self.outputs = 0  # output_index of the next item
        self.messages = 0  # message items opened (their ids)
        self.open: dict[str, Any] | None = None  # the message being written
        self.items: list[dict[str, Any]] = []  # what the final response holds
        self.model: str | None = None  # the routed model, once the log says

    def _emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _snapshot(self, status: str) -> dict[str, Any]:
        snapshot = response_object(self.task, status=status, final=False)
        if self.model:
            snapshot["model"] = self.model
        return snapshot

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.created:
            self.created = True
            out.append(self._emit("response.created", response=self._snapshot("queued")))
        kind = event["type"]
        if kind == "step" and event.get("name") == "model_selected":
            self.model = (event.get("detail") or {}).get("model") or self.model
        elif kind == "status" and event.get("status") == TaskStatus.QUEUED:
            out.append(self._emit("response.queued", response=self._snapshot("queued")))
        elif kind == "status" and event.get("status") == TaskStatus.PROCESSING:
            out.append(self._emit("response.in_progress", response=self._snapshot("in_progress")))
        elif kind == "chunk":
            out += self._open_message()
            assert self.open is not None
            self.open["text"] += event["content"]
            out.append(self._emit("response.output_text.delta", item_id=self.open["id"],
                                  output_index=self.open["index"], content_index=0, delta=event["content"],
                                  logprobs=[]))
        elif kind == "reset":
            out += self._close_message("incomplete")
            self.items.clear()
        elif kind == "tool_call" and event.get("client"):
            out += self._close_message("completed")
            item = function_call_item({"id": event["id"], "name": event["name"], "arguments": event["arguments"]})
            index, self.outputs = self.outputs, self.outputs + 1
            out.append(self._emit("response.output_item.added", output_index=index,
                                  item={**item, "arguments": "", "status": "in_progress"}))
            out.append(self._emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                  delta=item["arguments"]))
            out.append(self._emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=item["arguments"]))
            out.append(self._emit("response.output_item.done", output_index=index, item=item))
            self.items.append(item)
        elif kind == "done":
            out += self._done(event)
        return out

    def _open_message(self) -> list[dict[str, Any]]:
        if self.open is not None:
            return []
        item_id = message_item_id(self.hex, self.messages)
        self.open = {"id": item_id, "index": self.outputs, "text": ""}
        self.messages += 1
        self.outputs += 1
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [self._emit("response.output_item.added", output_index=self.open["index"],
                           item=message_item(item_id, "", "in_progress")),
                self._emit("response.content_part.added", item_id=item_id, output_index=self.open["index"],
                           content_index=0, part=part)]

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        item_id, index, text = self.open["id"], self.open["index"], self.open["text"]
        self.open = None
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = message_item(item_id, text, status)
        if status == "completed":
            self.items.append(item)
        return [self._emit("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                           text=text, logprobs=[]),
                self._emit("response.content_part.done", item_id=item_id, output_index=index, content_index=0,
                           part=part),
                self._emit("response.output_item.done", output_index=index, item=item)]

    def _done(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        status = event["status"]
        out = self._close_message("completed" if status == TaskStatus.COMPLETED else "incomplete")
        result, error = event.get("result"), event.get("error")
        snapshot = response_object(self.task, status=status, result=result or {}, error=error)
        snapshot["output"] = list(self.items)
        if self.model:
            snapshot["model"] = self.model
        kind = {TaskStatus.COMPLETED: "response.completed", TaskStatus.FAILED: "response.failed"}.get(
            status, "response.cancelled")
        return [*out, self._emit(kind, response=snapshot)]


def _response_frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def response_stream(task: Task, *, starting_after: int = -1,
                          on_leave: Callable[[str], None] | None = None) -> AsyncIterator[bytes]:
    """The response's events with sequence_number > starting_after, live to the end.
    `on_leave`: called with the task id when the client leaves before the end."""
    translator = ResponseEvents(task)
    async with aclosing(_translated(str(task.id), translator.feed, on_leave)) as events:
        async for out in events:
            if out is None:
                yield PING
            elif out["sequence_number"] > starting_after:
                yield _response_frame(out)
