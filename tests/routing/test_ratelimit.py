"""Per-deployment rpm/tpm limits: callers over the limit wait (sleeping), none fails."""

from __future__ import annotations

import asyncio

import pytest

from routing import ratelimit
from routing.ratelimit import rate_limit_acquire


async def acquire_all(n: int, **limits) -> list[float]:
    return await asyncio.gather(*(rate_limit_acquire("dep-a", **limits) for _ in range(n)))


@pytest.mark.django_db
def test_calls_over_the_rpm_limit_wait_their_turn_instead_of_failing():
    # 120 rpm with a one-second burst: 2 calls at once, then one every half second.
    waited = asyncio.run(acquire_all(5, rpm=120, tpm=None, tokens=10, burst_s=1.0))

    assert len(waited) == 5
    assert sorted(w == 0 for w in waited).count(True) == 2
    assert all(w > 0 for w in sorted(waited)[2:])


@pytest.mark.django_db
def test_a_tpm_limit_admits_calls_as_tokens_refill():
    # 6,000 tpm with a one-second burst: 100 tokens at once, refilling at 100 per second.
    waited = asyncio.run(acquire_all(3, rpm=None, tpm=6000, tokens=60, burst_s=1.0))

    assert sorted(w == 0 for w in waited).count(True) == 1
    assert max(waited) > 0


@pytest.mark.django_db
def test_the_limit_is_shared_by_every_caller_of_the_deployment():
    async def two_workers() -> tuple[list[float], list[float]]:
        # Two independent clients, as two worker processes would have.
        first = await acquire_all(2, rpm=120, tpm=None, tokens=1, burst_s=1.0)
        second = await acquire_all(1, rpm=120, tpm=None, tokens=1, burst_s=1.0)
        return first, second

    first, second = asyncio.run(two_workers())

    assert first == [0.0, 0.0] and second[0] > 0


@pytest.mark.django_db
def test_waiting_sleeps_instead_of_polling(monkeypatch):
    calls = []
    real = ratelimit.rate_limit_try

    async def counting(*args, **kwargs):
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(ratelimit, "rate_limit_try", counting)
    asyncio.run(acquire_all(2, rpm=60, tpm=None, tokens=1, burst_s=1.0))  # the second waits ~1 s

    assert len(calls) <= 4


@pytest.mark.django_db
def test_a_deployment_without_limits_never_waits():
    assert asyncio.run(acquire_all(20, rpm=None, tpm=None, tokens=10_000)) == [0.0] * 20
