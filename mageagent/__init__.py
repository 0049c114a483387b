from __future__ import annotations

import os

# litellm must never try the network for its model map, even when imported indirectly.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from .celery import app as celery_app

__all__ = ("celery_app",)
