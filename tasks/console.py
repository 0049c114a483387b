"""The live task console (/console/): a page the service serves itself, with its own static
script, that lists recent tasks, follows one as it streams (EventSource on the task's SSE
stream) and cancels it. A tenant signs in with an API key (its company's tasks); an admin's
staff session sees every company's. The data comes from the same selectors and services as
the API, through the two endpoints below, which take a key or a staff session."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from mageagent.tenancy.auth import ApiKeyAuthentication, StaffSessionAuthentication

from .apis import TaskCancelApi, TaskListCreateApi

CONSOLE_AUTH = [ApiKeyAuthentication, StaffSessionAuthentication]


@ensure_csrf_cookie  # a staff session's cancel sends the CSRF token back
def console_view(request: HttpRequest) -> HttpResponse:
    staff = bool(request.user.is_active and request.user.is_staff)
    return TemplateResponse(request, "tasks/console.html", {"staff": staff, "api": "/mageagent/api/v1"})


class ConsoleTaskListApi(TaskListCreateApi):
    """GET /tasks's list (filters, cursor pagination), also for a staff session."""

    authentication_classes = CONSOLE_AUTH
    http_method_names = ["get", "head", "options"]

    @extend_schema(exclude=True)  # the console's, not the public API's
    def get(self, request: Request) -> Response:
        return super().get(request)


class ConsoleTaskCancelApi(TaskCancelApi):
    authentication_classes = CONSOLE_AUTH

    @extend_schema(exclude=True)
    def post(self, request: Request, task_id: str) -> Response:
        return super().post(request, task_id)
