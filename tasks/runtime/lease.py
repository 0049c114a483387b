"""Workers take turns at reconciling: whoever holds a Redis lease runs the reconciler
(tasks/housekeeping.py) every RECONCILE_EVERY_S, so web + worker processes alone recover
what a dead worker or a restarted Redis lost. Celery beat may still run it too: every step
of the reconciler is a guarded transition, so two runs at once do no harm.

The lease is a key set with NX and an expiry of three periods, holding its owner's token;
the owner renews it each period (compare-and-expire in one script), so another worker
takes over within three periods of the owner's death.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection

from mageagent.redis import sync_script
from tasks import housekeeping

from .heartbeat import WORKER_ID
from .loop import runtime

logger = logging.getLogger(__name__)



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


def lease_take(token: str, ttl_s: float) -> bool:
    """Take the lease, or renew it when `token` holds it; False while another holds it."""
    return bool(sync_script(_TAKE)(keys=[lease_key()], args=[token, int(ttl_s * 1000)]))


class Reconciler:
    def __init__(self) -> None:
        self.started = False
        self.lock = threading.Lock()
        self.runs = 0
        self.last_run = 0.0

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
            time.sleep(max(every - (time.monotonic() - began), 0.1))

    def tick(self, every: float) -> None:
        try:
            if lease_take(WORKER_ID, every * 3):
                close_old_connections()
                began = time.monotonic()
                # Redis was unreachable since the last run (this process's heartbeat failed).
                outage = 0 < self.last_run <= runtime.redis_failed_at
                housekeeping.tasks_reconcile(after_outage=outage)
                self.last_run = began
                self.runs += 1
        except Exception:
            # Redis or the database is down: the next period tries again.
            logger.warning("reconciler run failed", exc_info=True)
        finally:
            connection.close()


reconciler = Reconciler()
