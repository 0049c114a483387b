"""Celery's module in the `tasks` app: thin Celery tasks that call the domain code."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task as CeleryTask
from celery import shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from django.conf import settings
from prometheus_client import start_http_server

from mageagent import metrics
from mageagent.logging import log_context
from mageagent.redis_check import warn_if_redis_evicts

from . import housekeeping
from .runtime import executor
from .runtime.heartbeat import held
from .runtime.lease import reconciler
from .runtime.loop import runtime
from .services import TASK_EXECUTE_JOB


@shared_task(name=TASK_EXECUTE_JOB, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def task_execute_job(self: CeleryTask, task_id: str, request_id: str = "") -> None:
    with log_context(task_id=task_id, request_id=request_id or None):
        countdown = executor.execute(task_id)
    if countdown is not None:
        raise self.retry(countdown=countdown)


@shared_task(name="mageagent.housekeeping.reconcile", ignore_result=True)
def tasks_reconcile_job() -> dict[str, Any]:
    return housekeeping.tasks_reconcile()


@shared_task(name="mageagent.housekeeping.prune", ignore_result=True)
def tasks_prune_job() -> dict[str, Any]:
    return housekeeping.tasks_prune()


@worker_ready.connect
@worker_process_init.connect
def _start_runtime(**_: Any) -> None:
    # The event loop, heartbeat and cancel listener run from start-up, so /readyz sees
    # this worker before its first task.
    import litellm  # noqa: F401  (a slow import: pay it at start, not in the first task)

    runtime.ensure_started()
    reconciler.ensure_started()
    warn_if_redis_evicts()
    _serve_metrics()


@worker_shutting_down.connect
def _hand_over_the_reconcile_lease(**_: Any) -> None:
    reconciler.stop()


_metrics_served = False


def _serve_metrics() -> None:
    # Once per process: a threads-pool worker gets worker_ready, a prefork child
    # worker_process_init (several children on one host need a port each).
    global _metrics_served
    port = settings.MAGEAGENT["WORKER_METRICS_PORT"]
    if _metrics_served or not port:
        return
    _metrics_served = True
    metrics.running_gauge_bind(lambda: len(held))
    try:
        start_http_server(port)
    except OSError as exc:
        logging.getLogger(__name__).warning("worker metrics: port %d is not free (%s); not served", port, exc)
