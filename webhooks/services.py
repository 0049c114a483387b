"""State changes of webhooks and their deliveries.

A delivery is a row before it is a message: the receiver of `task_finished` writes one per
subscribed endpoint, then hands its id to Celery. An attempt first claims the row (a
guarded UPDATE), so duplicate messages, the sweep and a restarted worker never send one
attempt twice; a crashed attempt's claim expires and the sweep sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from yarl import URL

from mageagent.errors import Conflict, ValidationFailed
from mageagent.tenancy.auth import Tenant
from tasks.models import Task, TaskStatus
from tasks.serializers import TaskOutputSerializer
from tools import netfetch

from . import signing
from .conf import knob
from .models import Delivery, DeliveryStatus, Webhook
from .selectors import active_cache, webhooks_active

logger = logging.getLogger(__name__)

EVENT_FOR_STATUS = {TaskStatus.COMPLETED: "task.completed", TaskStatus.FAILED: "task.failed",
                    TaskStatus.CANCELLED: "task.cancelled"}


def url_refusal(url: str) -> str | None:
    """Why deliveries to `url` would be refused by the SSRF guard of file fetching, or None."""
    try:
        asyncio.run(netfetch.vet(URL(url)))
    except (ValueError, TypeError) as exc:
        return f"invalid URL: {exc}"
    except netfetch.FetchRefused as exc:
        return str(exc)
    return None


def _check_url(url: str) -> None:
    reason = url_refusal(url)
    if reason is not None:
        raise ValidationFailed(f"the webhook URL is refused: {reason}", details={"url": [reason]})


def webhook_create(*, tenant: Tenant, url: str, events: list[str]) -> Webhook:
    company_id, app_id = tenant.app_ids
    _check_url(url)
    if Webhook.objects.filter(app_id=app_id).count() >= knob("WEBHOOK_MAX_PER_APP"):
        raise Conflict(f"an app may have at most {knob('WEBHOOK_MAX_PER_APP')} webhooks")
    return Webhook.objects.create(company_id=company_id, app_id=app_id, url=url, events=list(events),
                                  secret=signing.secret_new())


def webhook_delete(*, webhook: Webhook) -> None:
    webhook.delete()


def webhook_rotate_secret(*, webhook: Webhook) -> Webhook:
    """A new secret; the old one keeps signing (as a second signature) for the grace period."""
    webhook.previous_secret = webhook.secret
    webhook.previous_secret_expires_at = timezone.now() + timedelta(seconds=knob("WEBHOOK_ROTATION_GRACE_S"))
    webhook.secret = signing.secret_new()
    webhook.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
    return webhook


def webhook_enable(*, webhook: Webhook) -> Webhook:
    """Turn a disabled endpoint back on (staff, from the admin); its failure streak starts again."""
    webhook.is_active, webhook.disabled_at, webhook.disabled_reason, webhook.failing_since = True, None, "", None
    webhook.save(update_fields=["is_active", "disabled_at", "disabled_reason", "failing_since"])
    return webhook


def _signing_secrets(webhook: Webhook, now: datetime) -> list[str]:
    keep_old = webhook.previous_secret and (webhook.previous_secret_expires_at or now) > now
    return [webhook.secret, webhook.previous_secret] if keep_old else [webhook.secret]


# --- deliveries -------------------------------------------------------------------------------
def deliveries_create_for_task(*, task_id: str, status: str, app_id: int | None = None) -> list[str]:
    """One pending delivery per active endpoint of the task's app (`app_id`, looked up when
    None) subscribed to its event."""
    event_type = EVENT_FOR_STATUS.get(status)  # type: ignore[call-overload]
    if event_type is None:
        return []
    if app_id is not None and not webhooks_active(app_id=app_id):
        return []
    found = Webhook.objects.filter(is_active=True).only("id", "events")
    found = found.filter(app_id=app_id) if app_id is not None else found.filter(app__tasks__id=task_id)
    hooks = [w for w in found if event_type in w.events]
    if not hooks:
        return []
    now = timezone.now()
    rows = [Delivery(webhook_id=w.id, msg_id=f"msg_{uuid.uuid4().hex}", event_type=event_type, task_id=task_id,
                     next_attempt_at=now) for w in hooks]
    Delivery.objects.bulk_create(rows)
    return [str(row.id) for row in rows]


@dataclass(frozen=True)
class AttemptResult:
    attempted: bool
    retry_in_s: float | None = None  # when the next attempt is due, if there is one


def _claim(delivery_id: str, now: datetime) -> bool:
    due = Q(locked_until__isnull=True) | Q(locked_until__lt=now)
    hold = timedelta(seconds=knob("WEBHOOK_TIMEOUT_S") + 30)
    return Delivery.objects.filter(due, pk=delivery_id, status=DeliveryStatus.PENDING,
                                   next_attempt_at__lte=now).update(locked_until=now + hold) == 1


def _render(delivery: Delivery) -> bytes | None:
    """The body: the Task object as GET /tasks/{id} renders it, at the first attempt."""
    task = Task.objects.select_related("company", "app").filter(pk=delivery.task_id).first()
    if task is None:
        return None
    data = TaskOutputSerializer(task).data
    return orjson.dumps({"type": delivery.event_type, "timestamp": timezone.now().isoformat(), "data": data})


def _result_pending(delivery: Delivery) -> bool:
    """A task cancelled while it ran gets its partial result written just after the
    transition (by the worker, within CANCEL_WAIT_S): wait briefly for it."""
    if delivery.event_type != "task.cancelled" or delivery.payload:
        return False
    task = Task.objects.filter(pk=delivery.task_id).values("started_at", "result").first()
    young = timezone.now() - delivery.created_at < timedelta(seconds=knob("CANCEL_WAIT_S") * 3 + 1)
    return bool(task and task["started_at"] and task["result"] is None and young)


def delivery_attempt(*, delivery_id: str) -> AttemptResult:
    """Send a due delivery once and record the outcome; a no-op when it is not due or another
    attempt holds it."""
    now = timezone.now()
    if not _claim(delivery_id, now):
        return AttemptResult(attempted=False)
    delivery = Delivery.objects.select_related("webhook").get(pk=delivery_id)
    webhook = delivery.webhook
    if not webhook.is_active:
        _finish(delivery, status=DeliveryStatus.FAILED, error=f"the endpoint is disabled: {webhook.disabled_reason}")
        return AttemptResult(attempted=False)
    if _result_pending(delivery):
        Delivery.objects.filter(pk=delivery.pk).update(locked_until=None, next_attempt_at=now + timedelta(seconds=0.5))
        return AttemptResult(attempted=False, retry_in_s=0.5)
    if not delivery.payload:
        body = _render(delivery)
        if body is None:
            _finish(delivery, status=DeliveryStatus.FAILED, error="the task no longer exists")
            return AttemptResult(attempted=False)
        delivery.payload = body.decode()
        Delivery.objects.filter(pk=delivery.pk).update(payload=delivery.payload)
    body = delivery.payload.encode()
    headers = signing.headers(_signing_secrets(webhook, now), msg_id=delivery.msg_id, timestamp=int(time.time()),
                              body=body)
    try:
        code: int | None = asyncio.run(netfetch.post(webhook.url, body=body, headers=headers,
                                                     timeout_s=knob("WEBHOOK_TIMEOUT_S")))
        error = "" if 200 <= (code or 0) < 300 else f"HTTP {code}"
    except netfetch.FetchRefused as exc:
        code, error = None, str(exc)
    return _record(delivery, code=code, error=error)


def _finish(delivery: Delivery, *, status: str, error: str = "", **values: Any) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(status=status, last_error=error[:2000], locked_until=None,
                                                   next_attempt_at=None, **values)


def _record(delivery: Delivery, *, code: int | None, error: str) -> AttemptResult:
    now = timezone.now()
    attempts = delivery.attempts + 1
    webhook = delivery.webhook
    if not error:
        _finish(delivery, status=DeliveryStatus.SUCCEEDED, attempts=attempts, last_status_code=code,
                delivered_at=now)
        if webhook.failing_since is not None:
            Webhook.objects.filter(pk=webhook.pk).update(failing_since=None)
        return AttemptResult(attempted=True)
    schedule = knob("WEBHOOK_RETRY_SCHEDULE_S")
    Webhook.objects.filter(pk=webhook.pk, failing_since__isnull=True).update(failing_since=now)
    if _disable_if_failing_too_long(webhook, now):
        _finish(delivery, status=DeliveryStatus.FAILED, attempts=attempts, last_status_code=code,
                error=f"{error}; the endpoint was disabled")
        return AttemptResult(attempted=True)
    if attempts > len(schedule):
        _finish(delivery, status=DeliveryStatus.FAILED, attempts=attempts, last_status_code=code,
                error=f"{error}; gave up after {attempts} attempts")
        return AttemptResult(attempted=True)
    delay = float(schedule[attempts - 1])
    Delivery.objects.filter(pk=delivery.pk).update(attempts=attempts, last_status_code=code, last_error=error[:2000],
                                                   next_attempt_at=now + timedelta(seconds=delay), locked_until=None)
    return AttemptResult(attempted=True, retry_in_s=delay)


def _disable_if_failing_too_long(webhook: Webhook, now: datetime) -> bool:
    since = Webhook.objects.filter(pk=webhook.pk).values_list("failing_since", flat=True).first()
    if since is None or now - since < timedelta(seconds=knob("WEBHOOK_DISABLE_AFTER_S")):
        return False
    reason = (f"disabled {now:%Y-%m-%d %H:%M} UTC: every delivery attempt failed since "
              f"{since:%Y-%m-%d %H:%M} UTC")
    with transaction.atomic():
        changed = Webhook.objects.filter(pk=webhook.pk, is_active=True).update(
            is_active=False, disabled_at=now, disabled_reason=reason)
        if changed:
            active_cache.changed()  # an UPDATE sends no post_save
            Delivery.objects.filter(webhook_id=webhook.pk, status=DeliveryStatus.PENDING).update(
                status=DeliveryStatus.FAILED, next_attempt_at=None, locked_until=None,
                last_error="the endpoint was disabled")
    if changed:
        logger.warning("webhook %s (%s) %s", webhook.pk, webhook.url, reason)
    return True


def deliveries_due(*, grace_s: float = 5.0, limit: int = 1000) -> list[str]:
    """Pending deliveries due for `grace_s` and not held: lost messages, retries too far
    off for a countdown, and attempts a dead worker left."""
    now = timezone.now()
    qs = (Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now - timedelta(seconds=grace_s))
          .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now)).order_by("next_attempt_at"))
    return [str(pk) for pk in qs.values_list("id", flat=True)[:limit]]

