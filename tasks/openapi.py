"""The SSE stream in the OpenAPI schema: its view is a plain async Django view (tasks/streaming.py),
which drf-spectacular does not see, so its operation is written here and added by a hook."""

from __future__ import annotations

from typing import Any

from mageagent.openapi import API_PREFIX, error_response

# A position past the event log's 64-bit range is a 400.
_POSITION = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
# Before OpenAPI 3.2 (itemSchema), a text/event-stream schema describes one event of the stream.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the event's `seq`"},
        "event": {"type": "string", "description": "the event's `type`; absent (`message`) for `chunk` and `done`"},
        "data": {"type": "string", "description": "the event object as JSON"},
        "retry": {"type": "integer", "description": "the reconnection delay the client should use, in ms"},
    },
}

SSE_OPERATION: dict[str, Any] = {
    "operationId": "tasks_stream",
    "summary": "Follow a task as Server-Sent Events",
    "description": (
        "The task's event log as `text/event-stream`: every event with `seq > after` (replayed), then live "
        "ones, then the response ends after `done`. Each event carries `id: <seq>`; `chunk` and `done` come "
        "without an `event:` line (a plain `EventSource.onmessage` sees them), the other types as named events "
        "(`event: status`, `event: tool_call`, ...). A `: ping` comment comes at least every 15 s while idle. "
        "Resume with the `Last-Event-ID` header (what `EventSource` sends when it reconnects) or `?after=N`: "
        "nothing is lost or repeated. A browser's `EventSource` cannot set headers: pass the key as `?token=`."
    ),
    "tags": ["tasks"],
    "parameters": [
        {"in": "path", "name": "task_id", "required": True, "schema": {"type": "string"}},
        {"in": "query", "name": "after", "schema": _POSITION, "description": "replay events with `seq > after`"},
        # A header is text: digits, or empty for none (what EventSource sends after an empty `id:`).
        {"in": "header", "name": "Last-Event-ID",
         "schema": {"type": "string", "pattern": r"^([0-9]{0,18}|[0-8][0-9]{18})$"},
         "description": "as `after` (wins over it); sent by `EventSource` when it reconnects"},
        {"in": "query", "name": "token", "schema": {"type": "string"},
         "description": "the API key, for clients that cannot set headers; keep such URLs out of logs"},
    ],
    "security": [{"BearerAuth": []}, {"ApiKeyAuth": []}],
    "responses": {
        "200": {
            "description": "The event stream; each `data:` line is one event object (see the API description).",
            "content": {"text/event-stream": {"schema": SSE_EVENT, "example": (
                'id: 1\nevent: status\ndata: {"seq": 1, "type": "status", "status": "queued", ...}\n\n'
                'id: 5\ndata: {"seq": 5, "type": "chunk", "content": "Hello"}\n\n'
                'id: 9\ndata: {"seq": 9, "type": "done", "done": true, "status": "completed", "result": {...}}\n\n')}},
        },
        **{str(status): error_response(status) for status in (400, 401, 404, 429, 503)},
    },
}


def document_stream(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS: the SSE stream, a plain Django view that drf-spectacular does not see,
    beside the DRF views it belongs with."""
    result["paths"][f"{API_PREFIX}/tasks/{{task_id}}/stream"] = {"get": SSE_OPERATION}
    return result
