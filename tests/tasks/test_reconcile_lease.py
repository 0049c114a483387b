"""Workers take turns at reconciling under a Redis lease: one at a time, and another takes
over when the holder stops renewing."""

from __future__ import annotations

import time
import uuid

import pytest

from tasks import events, housekeeping
from tasks.runtime.lease import Reconciler, lease_key, lease_release, lease_take
from tasks.runtime.loop import runtime


@pytest.fixture(autouse=True)
def _no_lease_left() -> None:
    events.sync_client().delete(lease_key())


def test_one_worker_holds_the_lease_and_renews_it_while_others_wait():
    alpha, beta = f"alpha-{uuid.uuid4()}", f"beta-{uuid.uuid4()}"
    assert lease_take(alpha, 5)
    assert not lease_take(beta, 5)
    assert lease_take(alpha, 5)  # renewed
    assert events.sync_client().get(lease_key()).decode() == alpha


def test_another_worker_takes_over_once_the_holder_stops_renewing():
    alpha, beta = f"alpha-{uuid.uuid4()}", f"beta-{uuid.uuid4()}"
    assert lease_take(alpha, 0.2)
    deadline = time.monotonic() + 5
    while not lease_take(beta, 5):
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.05)
    assert not lease_take(alpha, 5)


def test_a_holder_releases_the_lease_and_only_its_own():
    alpha, beta = f"alpha-{uuid.uuid4()}", f"beta-{uuid.uuid4()}"
    assert lease_take(alpha, 60)
    assert not lease_release(beta)
    assert not lease_take(beta, 60)
    assert lease_release(alpha)
    assert lease_take(beta, 60)


def test_a_worker_shutting_down_hands_the_lease_over_and_reconciles_no_more(transactional_db):
    stopping, staying = Reconciler(), f"staying-{uuid.uuid4()}"
    stopping.tick(every=60)
    assert stopping.holding and stopping.runs == 1  # a new holder reconciles at once
    stopping.tick(every=60)
    assert stopping.runs == 1  # then once a period
    assert not lease_take(staying, 60)

    stopping.stop()
    assert lease_take(staying, 60)
    stopping.tick(every=0)
    assert stopping.runs == 1 and events.sync_client().get(lease_key()).decode() == staying


def test_a_worker_taking_the_lease_first_after_an_outage_reconciles_as_after_an_outage(transactional_db,
                                                                                         monkeypatch):
    # Queued tasks whose messages the outage lost are re-sent at once, not after
    # MAGEAGENT_RECONCILE_QUEUED_AFTER, whichever worker holds the lease when Redis is back.
    runs: list[bool] = []
    monkeypatch.setattr(housekeeping, "tasks_reconcile", lambda *, after_outage: runs.append(after_outage) or {})
    monkeypatch.setattr(runtime, "redis_failed_at", 0.0)
    Reconciler().tick(every=60)
    monkeypatch.setattr(runtime, "redis_failed_at", time.monotonic())
    events.sync_client().delete(lease_key())
    Reconciler().tick(every=60)
    assert runs == [False, True]
