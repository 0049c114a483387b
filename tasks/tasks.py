"""Celery's module in the `tasks` app: thin Celery tasks that call the domain code."""

from __future__ import annotations

from typing import Any

from celery import Task as CeleryTask
from celery import shared_task
from celery.signals import worker_process_init, worker_ready

from mageagent.redis_check import warn_if_redis_evicts

from . import housekeeping
from .runtime import executor
from .runtime.lease import reconciler
from .runtime.loop import runtime
from .services import TASK_EXECUTE_JOB


@shared_task(name=TASK_EXECUTE_JOB, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def task_execute_job(self: CeleryTask, task_id: str) -> None:
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
