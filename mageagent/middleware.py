"""Middleware of the project's own."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from . import metrics
from .errors import handler400
from .logging import log_context


def allowed_host_middleware(get_response: Callable[[HttpRequest], HttpResponseBase]
                            ) -> Callable[[HttpRequest], HttpResponseBase]:
    """A Host not in ALLOWED_HOSTS is the contract's JSON 400 before any other middleware
    asks for it: with DEBUG on, Django would render its HTML debug page for it."""

    def middleware(request: HttpRequest) -> HttpResponseBase:
        try:
            request.get_host()
        except DisallowedHost as exc:
            return handler400(request, exc)
        return get_response(request)

    return middleware


# A client's own X-Request-ID is kept when it looks like an id (no spaces or controls).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_context_middleware(get_response: Callable[[HttpRequest], HttpResponseBase]
                               ) -> Callable[[HttpRequest], HttpResponseBase]:
    """Each request's id (the client's `X-Request-ID`, or a new one) on its log lines, its
    response and the tasks it creates; and the request counted by route and status."""

    def middleware(request: HttpRequest) -> HttpResponseBase:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        began = time.perf_counter()
        with log_context(request_id=request_id):
            response = get_response(request)
        response["X-Request-ID"] = request_id
        match = request.resolver_match
        view = match.route if match is not None else "<unmatched>"
        metrics.HTTP_DURATION.labels(view=view).observe(time.perf_counter() - began)
        metrics.HTTP_REQUESTS.labels(method=_method(request.method), view=view,
                                     status=str(response.status_code)).inc()
        return response

    return middleware


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method(method: str | None) -> str:
    return method if method in _METHODS else "other"  # any verb a client sends: bounded
