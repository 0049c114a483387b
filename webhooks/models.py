from __future__ import annotations

import uuid

from django.db import models

from mageagent.tenancy.models import App, Company

EVENT_TYPES = ("task.completed", "task.failed", "task.cancelled")


class Webhook(models.Model):
    """An app's endpoint for task events. The secret is kept (not hashed): it signs every
    delivery. `failing_since` is the first failed attempt of the current failure streak."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="webhooks")
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    secret = models.CharField(max_length=100)
    # After a rotation the old secret also signs, until it expires, so receivers can switch.
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.TextField(blank=True, default="")
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("app", "is_active"), name="webhook_app_active")]

    def __str__(self) -> str:
        return self.url


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Delivery(models.Model):
    """One event for one endpoint: the ledger of its attempts. A lost broker message or a
    restarted worker leaves a pending row, which the sweep sends again."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    msg_id = models.CharField(max_length=64, unique=True)  # the webhook-id header, the same on every attempt
    event_type = models.CharField(max_length=32)
    task_id = models.UUIDField()  # not a foreign key: tasks are pruned, their deliveries stay
    payload = models.TextField(blank=True, default="")  # rendered at the first attempt, then sent unchanged
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=("status", "next_attempt_at"), name="delivery_due"),
                   models.Index(fields=("webhook", "-created_at"), name="delivery_webhook_recent")]

    def __str__(self) -> str:
        return f"{self.msg_id} {self.event_type} ({self.status})"
