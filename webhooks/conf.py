"""The webhooks' settings, read at call time so tests and operators can change them."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def knob(name: str) -> Any:
    return settings.MAGEAGENT[name]
