from __future__ import annotations

from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from mageagent.handlers import body_limit_register
        from mageagent.tenancy.models import App, Company
        from routing.selectors import max_prompt_body_bytes

        from .receivers import fair_settings_saved

        # A task's prompt may be as long as the largest enabled model's context window.
        body_limit_register(paths=("/mageagent/api/v1/tasks", "/mageagent/api/v1/route"),
                            limit=max_prompt_body_bytes)
        # Weights and limits edited in the admin apply from the next dispatch.
        post_save.connect(fair_settings_saved, sender=Company, dispatch_uid="tasks.fair_company_saved")
        post_save.connect(fair_settings_saved, sender=App, dispatch_uid="tasks.fair_app_saved")
