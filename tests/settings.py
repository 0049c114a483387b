"""Settings for the test suite: the real ones, pointed at the test infrastructure."""

from __future__ import annotations

import os

from tests.infra import configure

configure()
os.environ.setdefault("MAGEAGENT_API_KEY_CACHE_S", "0")
os.environ.setdefault("MAGEAGENT_ROUTING_BUDGET_CACHE_S", "0")
os.environ.setdefault("MAGEAGENT_WEBHOOK_CACHE_S", "0")
# Runs of the suite may overlap on one machine (several engineers, CI): each gets its own
# test database and broker queue, so no run's worker takes another run's tasks.
_run = os.environ.setdefault("MAGEAGENT_TEST_RUN", str(os.getpid()))
os.environ.setdefault("MAGEAGENT_QUEUE", f"mageagent-test-{_run}")
# Budgets, cooldowns and rate limits in Redis are keyed by company and deployment ids, which every
# run's fresh test database numbers from 1 again: a namespace per run keeps one run's holds (an
# hour's TTL) from being counted, or released on expiry, in the next.
os.environ.setdefault("MAGEAGENT_ROUTING_REDIS_NAMESPACE", f"ma:llm:test-{_run}")
if (os.environ.get("DATABASE_URL") or "").startswith("postgres"):
    os.environ.setdefault("MAGEAGENT_TEST_DB_NAME", f"test_mageagent_{_run}")
else:
    os.environ.setdefault("MAGEAGENT_TEST_DB_NAME", f"/tmp/mageagent-test-{_run}.sqlite3")
os.environ.setdefault("MAGEAGENT_RETRY_BACKOFF_S", "0.05")
os.environ.setdefault("MAGEAGENT_WORKER_HEARTBEAT_S", "1")
# The workers of e2e stacks reconcile under their lease this often (tasks/runtime/lease.py).
os.environ.setdefault("MAGEAGENT_RECONCILE_EVERY_S", "2")

from mageagent.settings import *  # noqa: E402, F403
