from __future__ import annotations

from typing import Any

from . import services
from .selectors import active_cache
from .tasks import delivery_send_later


def on_task_finished(sender: Any, *, task_id: str, status: str, app_id: int | None = None, **_: Any) -> None:
    """Runs after the task's terminal transition committed: record the deliveries (the
    ledger), then hand them to Celery."""
    for delivery_id in services.deliveries_create_for_task(task_id=task_id, status=status, app_id=app_id):
        delivery_send_later(delivery_id)


def on_webhook_changed(sender: Any, **_: Any) -> None:
    """A Webhook was saved or deleted (the API, the admin): every process asks again whether its app has one."""
    active_cache.changed()
