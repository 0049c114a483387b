from __future__ import annotations

from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Delivery, Webhook


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ("url", "app", "is_active", "disabled_reason", "failing_since", "created_at")
    list_filter = ("is_active", "company")
    search_fields = ("url",)
    # The secrets sign deliveries; the app saw them once, staff need not see them at all.
    exclude = ("secret", "previous_secret")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = ("id", "company", "app", "previous_secret_expires_at", "disabled_at", "disabled_reason",
                       "failing_since", "created_at")
    actions = ["enable"]

    @admin.action(description="Enable the selected webhooks again")
    def enable(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        for webhook in queryset:
            services.webhook_enable(webhook=webhook)
        self.message_user(request, f"{queryset.count()} webhook(s) enabled", messages.SUCCESS)


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("msg_id", "webhook", "event_type", "task_id", "status", "attempts", "last_status_code",
                    "next_attempt_at", "created_at")
    list_filter = ("status", "event_type")
    search_fields = ("msg_id", "task_id")
    list_select_related = ("webhook",)
    readonly_fields = [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
