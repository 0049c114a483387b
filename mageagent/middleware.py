"""Middleware of the project's own."""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from .errors import handler400


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
