"""The API's JSON parser: orjson, with limits that keep hostile bodies out of the database.

DRF's own parser (the standard library's json) turns a body nested thousands deep into a
RecursionError (a 500), and hands on strings that PostgreSQL or orjson refuse later, at
the INSERT or when the Task is rendered: a NUL (`\\u0000`, which no PostgreSQL text or
jsonb value may hold) and a lone surrogate (`\\ud800`, not UTF-8). Here they are a 400
`validation_error` before any view sees the body. orjson refuses lone surrogates itself.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_JSON_DEPTH = 32  # objects and arrays nested in a request body, the outermost counting 1


DEPTH_MESSAGE = f"JSON nested deeper than {MAX_JSON_DEPTH} levels is not accepted"


def _depth_exceeded(value: Any, depth: int = 1) -> bool:
    if depth > MAX_JSON_DEPTH:
        return True
    if isinstance(value, dict):
        return any(_depth_exceeded(v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
    if isinstance(value, list):
        return any(_depth_exceeded(v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return False


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def check_json(value: Any, raw: bytes) -> None:
    """ParseError when a parsed body nests deeper than MAX_JSON_DEPTH or holds a NUL."""
    if _depth_exceeded(value):
        raise ParseError(DEPTH_MESSAGE)
    # JSON can only carry a NUL escaped: the walk runs only for bodies that might hold one.
    if b"\\u0000" in raw and _holds_nul(value):
        raise ParseError("JSON strings must not contain the NUL character (\\u0000)")


def parse_json(raw: bytes) -> Any:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):  # orjson's own limit, far past ours
            raise ParseError(DEPTH_MESSAGE) from None
        raise ParseError(f"JSON parse error - {exc}") from None
    check_json(value, raw)
    return value


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        raw = stream.read() if stream is not None else b""
        if encoding.lower().replace("-", "") != "utf8":
            try:
                raw = raw.decode(encoding).encode()
            except (LookupError, UnicodeError) as exc:
                raise ParseError(f"JSON parse error - {exc}") from None
        return parse_json(raw)
