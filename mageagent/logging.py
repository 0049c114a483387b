"""Keeping API keys out of logs.

SSE and WebSocket clients in browsers pass their key as `?token=<key>` (API.md), and
daphne's access log writes every request's full URI. The contract's command line
(`daphne -b ... mageagent.asgi:application`) keeps daphne's default log, so the key is
redacted where daphne formats the entry.
"""

from __future__ import annotations

import re
from typing import Any

TOKEN_IN_QUERY = re.compile(r"(?<=[?&])(token=)[^&\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    return TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


def redact_daphne_access_log() -> None:
    from daphne.access import AccessLogGenerator

    original = AccessLogGenerator.write_entry
    if getattr(original, "redacts_tokens", False):
        return

    def write_entry(self: Any, host: Any, date: Any, request: str, *args: Any, **kwargs: Any) -> Any:
        return original(self, host, date, redact(request), *args, **kwargs)

    write_entry.redacts_tokens = True  # type: ignore[attr-defined]
    AccessLogGenerator.write_entry = write_entry  # type: ignore[method-assign]
