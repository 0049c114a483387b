"""Who the streaming endpoints take a caller for (mageagent/tenancy/access.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.test import override_settings

from mageagent.tenancy.access import tenant_from

STAFF = SimpleNamespace(is_active=True, is_staff=True)


async def staff() -> SimpleNamespace:
    return STAFF


async def no_lookup() -> None:
    raise AssertionError("the session's user was looked up although a key was given")


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:8080", "http://localhost:3000", "https://[::1]"])
async def test_a_staff_session_counts_from_our_own_origin_or_none(origin):
    headers = {} if origin is None else {"origin": origin}

    tenant = await tenant_from(headers, None, staff)

    assert tenant is not None and tenant.is_staff


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1.evil.example", "null", ""])
async def test_a_staff_session_from_a_foreign_page_counts_for_nothing(origin):
    assert await tenant_from({"origin": origin}, None, staff) is None


@override_settings(ALLOWED_HOSTS=[".example.com"])
async def test_the_allowed_origins_are_the_allowed_hosts():
    assert await tenant_from({"origin": "https://ops.example.com"}, None, staff) is not None
    assert await tenant_from({"origin": "http://127.0.0.1:8080"}, None, staff) is None


@pytest.mark.django_db(transaction=True)
async def test_an_api_key_counts_from_any_origin_without_a_session_lookup(alice):
    tenant = await tenant_from({"origin": "https://evil.example"}, alice.key, no_lookup)

    assert tenant is not None and tenant.company_id == alice.tenant.company_id


@pytest.mark.django_db(transaction=True)
async def test_a_key_the_process_has_seen_is_answered_without_a_thread_hop(alice, monkeypatch, settings):
    from mageagent.tenancy import access, auth

    monkeypatch.setattr(auth, "_cache", {})  # nothing seen yet
    settings.MAGEAGENT = {**settings.MAGEAGENT, "API_KEY_CACHE_S": 60.0}  # the suite's is 0
    hops: list[str] = []
    real_hop = access.stream_db

    def counting_hop(fn):  # records each hop into the threads, then makes it
        hops.append(fn.__name__)
        return real_hop(fn)

    monkeypatch.setattr(access, "stream_db", counting_hop)
    first = await tenant_from({}, alice.key, no_lookup)
    again = await tenant_from({}, alice.key, no_lookup)
    unknown = await tenant_from({}, "mk_not_a_key", no_lookup)
    unknown_again = await tenant_from({}, "mk_not_a_key", no_lookup)

    assert first == again and first is not None and first.app_id == alice.tenant.app_id
    assert unknown is None and unknown_again is None
    assert hops == ["tenant_for_key", "tenant_for_key"]  # alice's first lookup and the unknown key's
