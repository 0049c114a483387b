from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # The tasks app announces finished tasks with a signal and never imports this app.
        from tasks.signals import task_finished

        from .receivers import on_task_finished

        task_finished.connect(on_task_finished, dispatch_uid="webhooks.on_task_finished")
