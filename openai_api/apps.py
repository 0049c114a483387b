from __future__ import annotations

from django.apps import AppConfig


class OpenaiApiConfig(AppConfig):
    name = "openai_api"
    verbose_name = "OpenAI-compatible API"

    def ready(self) -> None:
        from mageagent.handlers import body_limit_register
        from routing.selectors import max_prompt_body_bytes

        # A conversation may be as long as the largest enabled model's context window.
        body_limit_register(paths=("/v1/chat/completions", "/v1/responses"), limit=max_prompt_body_bytes)
