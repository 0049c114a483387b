"""Daphne's HTTP request, as the application needs it.

Daphne's request is Twisted's `http.Request`, which parses a POSTed multipart body into
`request.args` before the application is called: daphne never reads them (it hands the raw
body to Django, whose parser applies our limits and error contract), the parse holds a second
copy of every upload, and a body it cannot parse is answered with an empty 400 that no client
can read. Twisted's documented `parsePOSTFormSubmission=False` turns that parse off.
"""

from __future__ import annotations

from typing import Any

from daphne.http_protocol import WebRequest


def keep_bodies_raw() -> None:
    original = WebRequest.__init__
    if getattr(original, "keeps_bodies_raw", False):
        return

    def __init__(self: WebRequest, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        original(self, *args, **kwargs)

    __init__.keeps_bodies_raw = True  # type: ignore[attr-defined]
    WebRequest.__init__ = __init__  # type: ignore[method-assign]
