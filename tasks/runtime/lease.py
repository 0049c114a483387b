"""Workers take turns at reconciling: whoever holds a Redis lease runs the reconciler
(tasks/housekeeping.py) every RECONCILE_EVERY_S, so web + worker processes alone recover
what a dead worker or a restarted Redis lost. Celery beat may still run it too: every step
of the reconciler is a guarded transition, so two runs at once do no harm.

The lease is a key set with NX holding its owner's token. Its expiry is short (LEASE_TTL_S)
and decoupled from the reconciling period: every worker tries the lease each
LEASE_RENEW_S (the owner renews it, compare-and-expire in one script) and reconciles every
RECONCILE_EVERY_S while it holds it. Another worker therefore takes over within
LEASE_TTL_S + LEASE_RENEW_S of a SIGKILLed owner's death (before: three reconciling
periods, 30 s), and at its next try after a warm shutdown, which releases the lease. A new
owner reconciles at once (its predecessor may have died mid-period) and again once a dead
predecessor's heartbeat has expired, when its tasks can be told orphaned.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection

from mageagent.redis import sync_script
from tasks import housekeeping

from .heartbeat import WORKER_ID, heartbeat_ttl
from .loop import runtime

logger = logging.getLogger(__name__)

# One Redis call per worker and LEASE_RENEW_S; the owner renews well before expiry.
LEASE_RENEW_S = 1.0
LEASE_TTL_S = 3 * LEASE_RENEW_S


def lease_key() -> str:
    # One lease per deployment, told apart by its queue (test runs sharing a Redis too).
    return f"ma:reconcile-lease:{settings.CELERY_TASK_DEFAULT_QUEUE}"

_TAKE = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_take(token: str, ttl_s: float) -> bool:
    """Take the lease, or renew it when `token` holds it; False while another holds it."""
    return bool(sync_script(_TAKE)(keys=[lease_key()], args=[token, int(ttl_s * 1000)]))


def lease_release(token: str) -> bool:
    """Give the lease up if `token` holds it (a warm shutdown): the next worker to try takes it."""
    return bool(sync_script(_RELEASE)(keys=[lease_key()], args=[token]))


class Reconciler:
    def __init__(self) -> None:
        self.started = False
        self.lock = threading.Lock()
        self.runs = 0
        self.last_run = 0.0
        self.next_run = 0.0
        self.holding = False
        self.stopping = False

    def ensure_started(self) -> None:
        with self.lock:
            if self.started or not settings.MAGEAGENT["RECONCILE_IN_WORKERS"]:
                return
            self.started = True
        threading.Thread(target=self._main, name="mageagent-reconciler", daemon=True).start()

    def _main(self) -> None:
        every = settings.MAGEAGENT["RECONCILE_EVERY_S"]
        while True:
            began = time.monotonic()
            self.tick(every)
            time.sleep(max(LEASE_RENEW_S - (time.monotonic() - began), 0.1))

    def tick(self, every: float) -> None:
        if self.stopping:
            return
        try:
            held_before, self.holding = self.holding, lease_take(WORKER_ID, LEASE_TTL_S)
            if not self.holding:
                return
            began = time.monotonic()
            if held_before and began < self.next_run:
                return
            # A failed run is tried again a period later, not at every renewal. A new holder's
            # predecessor may have just died: its heartbeat outlives it by up to
            # heartbeat_ttl(), after which the next run finds its tasks.
            self.next_run = began + (every if held_before else min(every, heartbeat_ttl() + LEASE_RENEW_S))
            close_old_connections()
            # Redis was unreachable since this process's last run (its heartbeat failed), or
            # ever, for a first run: the lease expires in any outage longer than LEASE_TTL_S, and
            # the worker taking it next may never have run before.
            outage = runtime.redis_failed_at > self.last_run
            housekeeping.tasks_reconcile(after_outage=outage)
            self.last_run = began
            self.runs += 1
        except Exception:
            # Redis or the database is down: the next period tries again.
            logger.warning("reconciler run failed", exc_info=True)
        finally:
            connection.close()

    def stop(self) -> None:
        """A warm shutdown began: reconcile no more and give the lease to a worker that stays."""
        self.stopping = True
        if not self.holding:
            return
        self.holding = False
        try:
            lease_release(WORKER_ID)
        except Exception:
            # Redis is down: the lease expires by itself within LEASE_TTL_S.
            logger.warning("could not release the reconcile lease", exc_info=True)


reconciler = Reconciler()
