from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # The tasks app announces finished tasks with a signal and never imports this app.
        from django.db.models.signals import post_delete, post_save

        from tasks.signals import task_finished

        from .models import Webhook
        from .receivers import on_task_finished, on_webhook_changed

        task_finished.connect(on_task_finished, dispatch_uid="webhooks.on_task_finished")
        post_save.connect(on_webhook_changed, sender=Webhook, dispatch_uid="webhooks.saved")
        post_delete.connect(on_webhook_changed, sender=Webhook, dispatch_uid="webhooks.deleted")
