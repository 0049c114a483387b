"""Celery's module in the `webhooks` app: deliveries and the sweep that re-sends what the
broker or a dead worker lost."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from . import services
from .conf import knob

logger = logging.getLogger(__name__)


def delivery_send_later(delivery_id: str, countdown: float | None = None) -> None:
    """Enqueue an attempt; a failure here is logged, the pending row stays for the sweep."""
    try:
        # The queue read per call, as tasks.services.task_dispatch does: it follows the settings.
        webhook_deliver_job.apply_async((delivery_id,), countdown=countdown,
                                        queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    except Exception:
        logger.exception("webhook delivery %s could not be enqueued; the sweep will send it", delivery_id)


@shared_task(name="mageagent.webhooks.deliver", ignore_result=True, acks_late=True)
def webhook_deliver_job(delivery_id: str) -> None:
    try:
        result = services.delivery_attempt(delivery_id=delivery_id)
    finally:
        connection.close()  # the worker's threads share a small pool
    # Longer waits are the sweep's: a countdown message held past the broker's visibility
    # timeout would be delivered twice.
    if result.retry_in_s is not None and result.retry_in_s <= knob("WEBHOOK_COUNTDOWN_MAX_S"):
        delivery_send_later(delivery_id, countdown=result.retry_in_s)


@shared_task(name="mageagent.webhooks.sweep", ignore_result=True)
def webhooks_sweep_job() -> int:
    due = services.deliveries_due()
    for delivery_id in due:
        delivery_send_later(delivery_id)
    return len(due)


def _sweep_forever() -> None:
    while True:
        interval = knob("WEBHOOK_SWEEP_S")
        time.sleep(interval)
        try:
            # One sweep per interval across the workers of this deployment (its queue).
            if cache.add(f"webhooks:sweep:{settings.CELERY_TASK_DEFAULT_QUEUE}", "1", timeout=max(1, int(interval))):
                webhooks_sweep_job()
        except Exception:
            logger.exception("the webhook sweep failed; trying again in %s s", interval)
        finally:
            connection.close()  # back to the pool between sweeps


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    # Beat is optional: every worker runs the sweep, one of them per interval.
    threading.Thread(target=_sweep_forever, name="webhooks-sweep", daemon=True).start()
