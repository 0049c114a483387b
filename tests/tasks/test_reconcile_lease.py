"""Workers take turns at reconciling under a Redis lease: one at a time, and another takes
over when the holder stops renewing."""

from __future__ import annotations

import time
import uuid

import pytest

from tasks import events
from tasks.runtime.lease import lease_key, lease_take


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
