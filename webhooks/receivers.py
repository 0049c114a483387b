from __future__ import annotations

from typing import Any

from . import services
from .tasks import delivery_send_later


def on_task_finished(sender: Any, *, task_id: str, status: str, **_: Any) -> None:
    """Runs after the task's terminal transition committed: record the deliveries (the
    ledger), then hand them to Celery."""
    for delivery_id in services.deliveries_create_for_task(task_id=task_id, status=status):
        delivery_send_later(delivery_id)
