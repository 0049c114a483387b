"""The API's per-app request rate limit: every DRF request made with an app's keys takes
one request from the app's bucket in Redis (routing/ratelimit.py's script: checked and
taken atomically, so concurrent requests on any number of web processes cannot overrun
it). Past the limit the answer is 429 `rate_limited` with `Retry-After`.

Not counted: cancels (tasks/apis.py: they stop spend), staff sessions, apps without a
limit, and the SSE and WebSocket streams (their handshakes are not DRF requests; a stream
is bounded by its task). If Redis does not answer, requests pass: the limit protects
capacity, it is not worth an outage.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from routing.ratelimit import rate_limit_try_sync

from .auth import Tenant

logger = logging.getLogger(__name__)


class AppRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self.retry_after: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        tenant = request.user
        if not isinstance(tenant, Tenant) or tenant.is_staff or tenant.requests_per_minute <= 0:
            return True
        try:
            wait = rate_limit_try_sync(f"app:{tenant.app_id}", rpm=tenant.requests_per_minute,
                                       burst_s=settings.MAGEAGENT["API_RATE_BURST_S"])
        except redis.RedisError as exc:
            logger.warning("app %s: rate limit not checked (Redis: %s); request let through", tenant.app_id, exc)
            return True
        if wait <= 0:
            return True
        self.retry_after = wait
        return False

    def wait(self) -> float | None:
        return self.retry_after
