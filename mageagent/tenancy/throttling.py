"""The API's per-app request rate limit: every DRF request made with an app's keys takes
one request from the app's bucket in Redis (mageagent/ratelimit.py's script: checked and
taken atomically, so concurrent requests on any number of web processes cannot overrun
it). Past the limit the answer is 429 `rate_limited` with `Retry-After`.

Opening an SSE stream or a WebSocket takes one too (`stream_open_wait`, async, for those
views and consumers, which DRF's throttles do not reach): a refused SSE request gets the
same 429, a refused WebSocket an error frame and close code 4429. Not counted: cancels
(tasks/apis.py: they stop spend), staff sessions, apps without a limit, and what a socket
does once open. If Redis does not answer, requests pass: the limit protects capacity, it
is not worth an outage.
"""

from __future__ import annotations

import logging
from typing import Any, TypeGuard

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from mageagent.errors import RateLimited, retry_after
from mageagent.ratelimit import rate_limit_try, rate_limit_try_sync

from .auth import Tenant

logger = logging.getLogger(__name__)


def _limited(tenant: object) -> TypeGuard[Tenant]:
    return isinstance(tenant, Tenant) and not tenant.is_staff and tenant.requests_per_minute > 0


def _bucket(tenant: Tenant) -> dict[str, Any]:
    return {"rpm": tenant.requests_per_minute, "burst_s": settings.MAGEAGENT["API_RATE_BURST_S"]}


def rate_limited(wait: float) -> RateLimited:
    """The refusal of a stream's open: the 429 of the SSE view, the error frame of a socket."""
    return RateLimited(f"this app's request rate limit is reached; retry in {wait:.1f} s",
                       headers={"Retry-After": retry_after(wait)})


def _let_through(tenant: Tenant, exc: Exception) -> float:
    logger.warning("app %s: rate limit not checked (Redis: %s); request let through", tenant.app_id, exc)
    return 0.0


async def stream_open_wait(tenant: Tenant) -> float:
    """0 when the app's bucket had a request for this stream, else the seconds to wait."""
    if not _limited(tenant):
        return 0.0
    try:
        return await rate_limit_try(f"app:{tenant.app_id}", tpm=None, tokens=0, **_bucket(tenant))
    except redis.RedisError as exc:
        return _let_through(tenant, exc)


class AppRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self.retry_after: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        tenant = request.user
        if not _limited(tenant):
            return True
        try:
            wait = rate_limit_try_sync(f"app:{tenant.app_id}", **_bucket(tenant))
        except redis.RedisError as exc:
            wait = _let_through(tenant, exc)
        if wait <= 0:
            return True
        self.retry_after = wait
        return False

    def wait(self) -> float | None:
        return self.retry_after
