"""Resolving the caller of a streaming endpoint (SSE, WebSocket): API key or staff session."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from .auth import Tenant, raw_key_from, staff_tenant, tenant_for_key


def query_params(query_string: bytes | str) -> dict[str, str]:
    text = query_string.decode() if isinstance(query_string, bytes) else query_string
    return {k: v[-1] for k, v in parse_qs(text).items()}


async def tenant_from(headers: dict[str, str], query_token: str | None, user: object = None) -> Tenant | None:
    raw = raw_key_from(headers, query_token)
    if raw is not None:
        return await database_sync_to_async(tenant_for_key)(raw)
    if user is not None and getattr(user, "is_active", False) and getattr(user, "is_staff", False):
        return staff_tenant()
    return None
