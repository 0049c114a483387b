"""Per-deployment rpm/tpm limits: callers over the limit wait (sleeping), none fails."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings

from mageagent import ratelimit
from mageagent.ratelimit import rate_limit_acquire

ROOT = Path(__file__).resolve().parents[2]


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


# One worker process: after the go line on stdin, it starts `calls` acquires at once and
# prints how many were admitted before the window closed (the others are still waiting).
WORKER = textwrap.dedent("""
    import asyncio, sys
    import django
    django.setup()
    from mageagent.ratelimit import rate_limit_acquire

    calls, rpm, burst_s, window_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])

    async def admitted() -> int:
        attempts = [asyncio.ensure_future(rate_limit_acquire("dep-shared", rpm=rpm, tpm=None, tokens=1,
                                                             burst_s=burst_s)) for _ in range(calls)]
        done, waiting = await asyncio.wait(attempts, timeout=window_s)
        for attempt in waiting:
            attempt.cancel()
        return sum(1 for attempt in done if attempt.exception() is None)

    print("ready", flush=True)
    sys.stdin.readline()
    print(asyncio.run(admitted()), flush=True)
""")


def spawn_worker(namespace: str, *, calls: int, rpm: int, burst_s: float, window_s: float) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "REDIS_URL": settings.REDIS_URL,
           "MAGEAGENT_ROUTING_REDIS_NAMESPACE": namespace, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(calls), str(rpm), str(burst_s), str(window_s)],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_worker_processes_together_never_exceed_the_deployments_limit(routing_namespace):
    # A bucket of 10 requests that refills one a minute: within these few seconds the limit
    # admits 10 calls in all, however the two processes' calls interleave. A limiter kept in
    # each process would admit 10 in each.
    workers = [spawn_worker(routing_namespace, calls=10, rpm=1, burst_s=600, window_s=2.0) for _ in range(2)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready", worker.communicate()[1]
    for worker in workers:  # both start acquiring at once
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [worker.communicate(timeout=60) for worker in workers]

    assert all(worker.returncode == 0 for worker in workers), [err for _, err in outputs]
    assert sum(int(out) for out, _ in outputs) == 10


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
