from __future__ import annotations

from django.contrib import admin
from django.contrib.staticfiles.views import serve as static_serve
from django.urls import URLPattern, URLResolver, include, path, re_path
from django.views.generic import RedirectView

from routing.apis import ModelListApi
from tasks.apis import (
    QueueMetricsApi,
    TaskCancelApi,
    TaskDetailApi,
    TaskEventsApi,
    TaskListCreateApi,
    TaskRouteApi,
    UsageApi,
)
from tasks.console import ConsoleTaskCancelApi, ConsoleTaskListApi, console_view
from tasks.streaming import task_stream_view
from tools.apis import ToolListApi

from . import docs, health
from .errors import api_not_found

api: list[URLPattern | URLResolver] = [
    path("tasks", TaskListCreateApi.as_view()),
    path("tasks/<str:task_id>", TaskDetailApi.as_view()),
    path("tasks/<str:task_id>/cancel", TaskCancelApi.as_view()),
    path("tasks/<str:task_id>/events", TaskEventsApi.as_view()),
    path("tasks/<str:task_id>/stream", task_stream_view),
    path("queue/metrics", QueueMetricsApi.as_view()),
    path("usage", UsageApi.as_view()),
    path("models", ModelListApi.as_view()),
    path("route", TaskRouteApi.as_view()),
    path("tools", ToolListApi.as_view()),
    path("", include("tools.urls")),
    path("", include("webhooks.urls")),
    path("schema", docs.schema_view, name="schema"),
    path("docs", docs.swagger_view, name="docs"),
    path("redoc", docs.redoc_view, name="redoc"),
    path("", docs.ApiIndexApi.as_view(), name="api-index"),
]

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="docs"), name="home"),  # the admin's "View site"
    path("mageagent/api/v1/", include(api)),
    # Last under the prefix: whatever it does not serve is the contract's JSON 404, also when
    # DEBUG is on (Django's handler404 is bypassed for its HTML debug page then).
    re_path(r"^mageagent/api/v1(?:/.*)?$", api_not_found),
    # The OpenAI-compatible API: OpenAI(base_url="http://HOST:PORT/v1", api_key=<a MageAgent key>).
    path("v1/", include("openai_api.urls")),
    path("admin/", admin.site.urls),
    # The live task console: a page of the service's own (a tenant's key or a staff session).
    path("console/", console_view, name="console"),
    path("console/tasks", ConsoleTaskListApi.as_view(), name="console-tasks"),
    path("console/tasks/<str:task_id>/cancel", ConsoleTaskCancelApi.as_view()),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.prometheus),
    # daphne serves no files: the admin's few static files come from the apps' static dirs
    # (through the finders, so no collectstatic is needed), off the API's path.
    re_path(r"^static/(?P<path>.*)$", static_serve, {"insecure": True}),
]

handler400 = "mageagent.errors.handler400"
handler404 = "mageagent.errors.handler404"
handler500 = "mageagent.errors.handler500"
