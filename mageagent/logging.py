"""Logging: the ids a line is about, JSON lines, and keeping API keys out of logs.

Every line of a request or a task carries the ids it is about (`request_id`, `task_id`,
company, app, attempt, model) from a context variable that the request path
(mageagent/middleware.py) and the worker's task path (tasks/tasks.py, the executor) set;
`MAGEAGENT_LOG_FORMAT=json` writes each line as one JSON object with them. Only ids: a
prompt, an answer or a key is never put in the context.

SSE and WebSocket clients in browsers pass their key as `?token=<key>` (API.md), and
daphne's access log writes every request's full URI. The contract's command line
(`daphne -b ... mageagent.asgi:application`) keeps daphne's default log, so the key is
redacted where daphne formats the entry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from daphne.access import AccessLogGenerator

TOKEN_IN_QUERY = re.compile(r"(?<=[?&])(token=)[^&\s]*", re.IGNORECASE)
# The fields a line may carry, in the order JSON lines show them.
CONTEXT_FIELDS = ("request_id", "task_id", "company", "app", "attempt", "model")
_context: ContextVar[dict[str, Any]] = ContextVar("mageagent_log_context", default={})  # noqa: B039 (never mutated)


def redact(text: str) -> str:
    return TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


# --- the ids a line is about ------------------------------------------------------------------
@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """These ids on every line logged inside the block (in this thread or task)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def log_context_add(**fields: Any) -> None:
    """More ids for the rest of the current block (or asyncio task, whose context is its own)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def current_request_id() -> str | None:
    return _context.get().get("request_id")


def log_fields() -> dict[str, Any]:
    """The current ids, to carry to another thread or asyncio task (log_context_add there)."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Puts the current ids on each record (`record.context`), for any formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = _context.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the ids, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update(getattr(record, "context", None) or {})
        for name in ("status", "method", "path", "client", "bytes"):  # an access-log line's fields
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class PlainFormatter(logging.Formatter):
    """The plain format, with the line's ids appended as `key=value`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = getattr(record, "context", None)
        if context:
            text += " [" + " ".join(f"{k}={context[k]}" for k in CONTEXT_FIELDS if k in context) + "]"
        return text


# --- daphne's access log ----------------------------------------------------------------------
access_logger = logging.getLogger("mageagent.access")


def redact_daphne_access_log(*, as_records: bool = False) -> None:
    """Redact ?token= in daphne's access log; with `as_records` (JSON logs), each entry becomes
    a log record of `mageagent.access` instead of a line daphne writes to stdout itself."""
    original = AccessLogGenerator.write_entry
    if getattr(original, "redacts_tokens", False):
        return

    def write_entry(self: Any, host: Any, date: Any, request: str, *args: Any, **kwargs: Any) -> Any:
        if not as_records:
            return original(self, host, date, redact(request), *args, **kwargs)
        status = kwargs.get("status", args[0] if args else None)
        length = kwargs.get("length", args[1] if len(args) > 1 else None)
        method, _, path = redact(request).partition(" ")
        access_logger.info("%s %s %s", method, path, status if status is not None else "-",
                           extra={"method": method, "path": path, "status": status, "client": host,
                                  "bytes": length})
        return None

    write_entry.redacts_tokens = True  # type: ignore[attr-defined]
    AccessLogGenerator.write_entry = write_entry  # type: ignore[method-assign]
