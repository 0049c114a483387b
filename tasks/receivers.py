"""Signal receivers of the tasks app (connected in apps.py)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from mageagent.tenancy.models import App, Company

from . import services

logger = logging.getLogger(__name__)


def fair_settings_saved(sender: type, instance: Company | App, **_: Any) -> None:
    """A company's or app's weight or limits may have changed: Redis gets them once saved."""

    def store() -> None:
        try:
            services.tenant_fair_settings_apply(tenant=instance)
        except Exception:
            # Redis is down: Redis keeps the values it had; saving again applies the new ones.
            logger.warning("the fair scheduling settings of %s could not be stored now", instance, exc_info=True)

    transaction.on_commit(store)
