"""Errors on /v1 in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
the statuses of the native API (mageagent/errors.py decides them; this only reshapes)."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers
from rest_framework.response import Response

from mageagent.errors import exception_handler, openai_error_body


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="invalid_request_error, authentication_error, rate_limit_error, ...")
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField()


class OpenAIErrorSerializer(serializers.Serializer):
    """The body of every error on /v1 (the schema's error responses there: mageagent/openapi.py)."""

    error = OpenAIErrorDetailSerializer()


def openai_error(*, message: str, code: str, status: int, param: str | None = None) -> dict[str, Any]:
    return openai_error_body(code, message, status, param)


def _param(details: Any) -> str | None:
    if isinstance(details, dict) and details:
        first = next(iter(details))
        return None if first == "non_field_errors" else str(first)
    return None


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The native handler's answer (status, headers, code), in OpenAI's body."""
    response = exception_handler(exc, context)
    if response is None:
        return None
    error = response.data["error"]
    response.data = openai_error(message=error["message"], code=error["code"], status=response.status_code,
                                 param=_param(error.get("details")))
    return response


def openai_error_response(*, message: str, code: str, status: int, param: str | None = None,
                          retry: bool = True) -> HttpResponse:
    response = HttpResponse(orjson.dumps(openai_error(message=message, code=code, status=status, param=param)),
                            status=status, content_type="application/json")
    if not retry:
        # The SDKs retry 409s and 5xx on their own; an answer from a finished task would only
        # run the task again.
        response["x-should-retry"] = "false"
    return response


@csrf_exempt
def v1_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    return JsonResponse(openai_error(message=f"no such endpoint: {request.method} {request.path}",
                                     code="not_found", status=404), status=404)
