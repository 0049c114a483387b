from __future__ import annotations

import logging.config
import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, celeryd_init, setup_logging, worker_shutdown
from django.conf import settings

from .tracing import configure as tracing_configure
from .tracing import shutdown as tracing_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mageagent.settings")

app = Celery("mageagent")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@celeryd_init.connect
@setup_logging.connect
def _logging_from_django(**_: Any) -> None:
    # The worker logs as the web does (settings.LOGGING: plain or JSON lines with the ids
    # they are about), not with Celery's own root handler; from the worker's init on, so
    # that its start-up warnings are log lines too.
    logging.config.dictConfig(settings.LOGGING)
    logging.captureWarnings(True)  # as Django does: warnings are log lines too


@celeryd_after_setup.connect
def _no_banner_in_json_logs(instance: Any = None, **_: Any) -> None:
    # The start-up banner is printed, not logged: with JSON logs every line must be JSON.
    if settings.LOG_FORMAT == "json" and instance is not None:
        instance.quiet = True


@celeryd_init.connect
def _tracing(**_: Any) -> None:
    tracing_configure(service="mageagent-worker", worker=True)


@worker_shutdown.connect
def _tracing_flush(**_: Any) -> None:
    tracing_shutdown()
