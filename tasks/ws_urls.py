"""Channels URL patterns (not named routing.py: `routing` is an app here)."""

from __future__ import annotations

from django.urls import path

from .consumers import MultiplexConsumer, TaskSocketConsumer

websocket_urlpatterns = [
    path("mageagent/api/v1/tasks/<uuid:task_id>/ws", TaskSocketConsumer.as_asgi()),
    path("mageagent/ws", MultiplexConsumer.as_asgi()),
]
