"""The tools' settings (the MAGEAGENT dict's tool block), read at call time so tests and
operators can change them without re-importing."""

from __future__ import annotations

from typing import Any

from django.conf import settings

_REQUIRED = object()


def knob(name: str, default: Any = _REQUIRED) -> Any:
    if default is _REQUIRED:
        return settings.MAGEAGENT[name]
    return settings.MAGEAGENT.get(name, default)  # type: ignore[attr-defined]
