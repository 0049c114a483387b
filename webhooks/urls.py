"""Webhook endpoints, included under the API prefix by mageagent/urls.py."""

from __future__ import annotations

from django.urls import path

from .apis import DeliveryListApi, WebhookDetailApi, WebhookListCreateApi, WebhookRotateSecretApi

urlpatterns = [
    path("webhooks", WebhookListCreateApi.as_view()),
    path("webhooks/<str:webhook_id>", WebhookDetailApi.as_view()),
    path("webhooks/<str:webhook_id>/rotate-secret", WebhookRotateSecretApi.as_view()),
    path("webhooks/<str:webhook_id>/deliveries", DeliveryListApi.as_view()),
]
