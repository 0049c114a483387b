from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from mageagent.errors import NotFound
from mageagent.tenancy.auth import Tenant
from mageagent.versioned import VersionedCache

from .conf import knob
from .models import Delivery, Webhook

# Every finished task asks it; most apps have no webhook. Webhook rows announce their changes
# (webhooks/apps.py connects its signals; services announce their bulk updates).
active_cache: VersionedCache[int, bool] = VersionedCache("webhooks", ttl_s=lambda: knob("WEBHOOK_CACHE_S"))


def webhooks_active(*, app_id: int) -> bool:
    """Whether the app has an active webhook, cached per process for WEBHOOK_CACHE_S."""
    return active_cache.get(app_id, lambda: Webhook.objects.filter(app_id=app_id, is_active=True).exists())


def webhook_list(*, tenant: Tenant) -> QuerySet[Webhook]:
    return Webhook.objects.filter(app_id=tenant.app_ids[1])


def webhook_get(*, tenant: Tenant, webhook_id: str) -> Webhook:
    """The caller's app's webhook, or NotFound (another app's does not exist for them)."""
    try:
        webhook = webhook_list(tenant=tenant).filter(pk=webhook_id).first()
    except (ValueError, ValidationError):  # a malformed id
        webhook = None
    if webhook is None:
        raise NotFound("webhook not found")
    return webhook


def delivery_list(*, webhook: Webhook) -> QuerySet[Delivery]:
    return Delivery.objects.filter(webhook=webhook)
