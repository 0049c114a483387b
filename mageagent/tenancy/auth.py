"""API-key authentication shared by DRF views, the SSE view and the WebSocket consumers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

from django.conf import settings
from rest_framework import exceptions as drf
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from mageagent.errors import AuthenticationFailed, CsrfFailed

from .models import ApiKey
from .services import key_digest


@dataclass(frozen=True)
class Tenant:
    """Who is calling: the key's company and app. Staff sessions see every company."""

    company_id: int | None
    company_slug: str
    app_id: int | None
    app_slug: str
    key_id: int | None = None
    is_staff: bool = False
    requests_per_minute: int = 0  # the app's API rate limit; 0: none

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def app_ids(self) -> tuple[int, int]:
        """(company_id, app_id) of an app's key; a staff session has neither."""
        if self.company_id is None or self.app_id is None:
            raise AuthenticationFailed("an API key is required (Authorization: Bearer <key>)")
        return self.company_id, self.app_id


# A tiny per-process cache: the key lookup is on every request's path. Revocation takes
# effect within API_KEY_CACHE_S seconds.
_cache: dict[str, tuple[float, Tenant | None]] = {}


def _cached(digest: str) -> tuple[bool, Tenant | None]:
    hit = _cache.get(digest)
    if hit is not None and hit[0] > time.monotonic():
        return True, hit[1]
    return False, None


def cached_tenant(raw_key: str) -> tuple[bool, Tenant | None]:
    """(True, the key's tenant or None) when the cache knows the key; (False, None) when
    only the database does. No I/O: an async caller checks here before a thread hop."""
    return _cached(key_digest(raw_key))


def tenant_for_key(raw_key: str) -> Tenant | None:
    digest = key_digest(raw_key)
    known, tenant = _cached(digest)
    if known:
        return tenant
    key = (
        ApiKey.objects.select_related("app__company")
        .filter(digest=digest, revoked_at__isnull=True, app__is_active=True, app__company__is_active=True)
        .first()
    )
    tenant = None
    if key is not None:
        rate = key.app.requests_per_minute
        tenant = Tenant(
            company_id=key.app.company_id, company_slug=key.app.company.slug,
            app_id=key.app_id, app_slug=key.app.slug, key_id=key.pk,
            requests_per_minute=settings.MAGEAGENT["API_RATE_PER_MIN"] if rate is None else rate,
        )
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[digest] = (time.monotonic() + settings.MAGEAGENT["API_KEY_CACHE_S"], tenant)
    return tenant


def request_tenant(request: Request) -> Tenant:
    """The caller of an API view: what TenantAuthentication put in `request.user`."""
    return cast(Tenant, request.user)


def raw_key_from(headers: dict[str, str], query_token: str | None) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    return query_token or None


def staff_tenant() -> Tenant:
    return Tenant(company_id=None, company_slug="*", app_id=None, app_slug="*", is_staff=True)


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Tenant, str] | None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw = raw_key_from(headers, None)
        if raw is None:
            return None
        tenant = tenant_for_key(raw)
        if tenant is None:
            raise AuthenticationFailed("invalid or revoked API key")
        return tenant, raw

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="mageagent"'


class StaffSessionAuthentication(SessionAuthentication):
    """An active staff member signed in to the admin, as the staff tenant (every company).
    DRF's session authentication: unsafe methods need the CSRF token. For the pages the
    service serves itself (the task console), never for the public API."""

    def authenticate(self, request: Request) -> tuple[Tenant, None] | None:
        found = super().authenticate(request)
        if found is None or not getattr(found[0], "is_staff", False):
            return None
        return staff_tenant(), None

    def enforce_csrf(self, request: Request) -> None:
        # DRF refuses with PermissionDenied, which the error contract renders as a 404 (no
        # object of another tenant is revealed): a missing token is said as what it is.
        try:
            super().enforce_csrf(request)
        except drf.PermissionDenied as exc:
            raise CsrfFailed(str(exc.detail)) from None


class IsTenant(BasePermission):
    def has_permission(self, request: Request, view: object) -> bool:
        if isinstance(request.user, Tenant):
            return True
        raise AuthenticationFailed("an API key is required (Authorization: Bearer <key>)")
