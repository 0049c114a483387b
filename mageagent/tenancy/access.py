"""Resolving the caller of a streaming endpoint (SSE, WebSocket): API key or staff session."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from mageagent.handlers import stream_db

from .auth import Tenant, cached_tenant, raw_key_from, staff_tenant, tenant_for_key


def query_params(query_string: bytes | str) -> dict[str, str]:
    text = query_string.decode() if isinstance(query_string, bytes) else query_string
    return {k: v[-1] for k, v in parse_qs(text).items()}


def origin_is_ours(headers: dict[str, str]) -> bool:
    """No Origin (not a browser page: curl, a server, a same-origin GET) or one whose host
    this service answers for (ALLOWED_HOSTS, as Django checks Host)."""
    origin = headers.get("origin")
    if origin is None:
        return True
    host = urlsplit(origin).netloc  # "null" (sandboxed pages, file://) has none: refused
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # Django's own DEBUG default
    return bool(domain) and validate_host(domain, allowed)


async def tenant_from(headers: dict[str, str], query_token: str | None,
                      auser: Callable[[], Awaitable[object]] | None = None) -> Tenant | None:
    """The caller: its API key, else a staff session. `auser()` gives the session's user;
    it is called only when no key was given (the lookup is a hop into the thread pool)."""
    raw = raw_key_from(headers, query_token)
    if raw is not None:
        # A key is a credential the page had to hold: valid from any origin (like a bearer
        # token under CORS).
        known, tenant = cached_tenant(raw)  # most calls: no thread hop at all
        return tenant if known else await stream_db(tenant_for_key)(raw)
    user = await auser() if auser is not None else None
    if user is not None and getattr(user, "is_active", False) and getattr(user, "is_staff", False):
        # A session cookie rides along on any page's WebSocket (browsers apply no CORS to
        # them), so a foreign page a signed-in staff member visits could read and cancel
        # every company's tasks: the session counts only from our own origin.
        return staff_tenant() if origin_is_ours(headers) else None
    return None
