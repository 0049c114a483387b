"""Channels URL patterns (not named routing.py: `routing` is an app here)."""

from __future__ import annotations

from django.urls import path

from .consumers import MultiplexConsumer, TaskSocketConsumer

websocket_urlpatterns = [
    # <str:>, not <uuid:>: a malformed id gets the contract's not_found frame, not a failed handshake.
    path("mageagent/api/v1/tasks/<str:task_id>/ws", TaskSocketConsumer.as_asgi()),
    path("mageagent/ws", MultiplexConsumer.as_asgi()),
]
