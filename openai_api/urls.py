from __future__ import annotations

from django.urls import path, re_path

from .apis import (
    ChatCompletionsApi,
    ModelDetailOpenAIApi,
    ModelListOpenAIApi,
    ResponseCancelApi,
    ResponseCreateApi,
    ResponseDetailApi,
)
from .errors import v1_not_found

urlpatterns = [
    path("models", ModelListOpenAIApi.as_view()),
    path("models/<path:model_id>", ModelDetailOpenAIApi.as_view()),
    path("chat/completions", ChatCompletionsApi.as_view()),
    path("responses", ResponseCreateApi.as_view()),
    path("responses/<str:response_id>", ResponseDetailApi.as_view()),
    path("responses/<str:response_id>/cancel", ResponseCancelApi.as_view()),
    # Whatever else is under /v1 is a 404 in OpenAI's shape.
    re_path(r"^.*$", v1_not_found),
]
