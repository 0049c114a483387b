from __future__ import annotations

from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"

    def ready(self) -> None:
        from mageagent.handlers import body_limit_register
        from routing.selectors import max_prompt_body_bytes

        # A task's prompt may be as long as the largest enabled model's context window.
        body_limit_register(paths=("/mageagent/api/v1/tasks", "/mageagent/api/v1/route"),
                            limit=max_prompt_body_bytes)
