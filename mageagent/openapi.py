"""The OpenAPI schema as the API really answers: drf-spectacular, extended through its public
hooks so that every view, including those of apps added later, gets the same treatment.

- `AutoSchema` (settings: DEFAULT_SCHEMA_CLASS) adds the contract's error responses an
  operation can answer: 400 when it takes input, 401 behind a key, 404 with a path parameter,
  413/415 with a body, 429 when throttled, 503 everywhere (mageagent/handlers.py sheds load).
  A view declares the errors only it answers (402, 409) with `error_responses(...)`, and one
  whose exception handler answers in another shape names that body as `error_serializer`.
- `ApiKeyScheme`: the two ways to send a key, as security schemes (Swagger's Authorize).
- `StrictSerializerScheme`: a StrictSerializer refuses unknown fields, so its schema says so.
- `error_response(status)`: the same response object, for operations written by hand (the SSE
  stream's, tasks/openapi.py).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ComponentRegistry
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

API_PREFIX = "/mageagent/api/v1"


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="stable machine-readable code, e.g. validation_error, not_found")
    message = serializers.CharField(help_text="human readable")
    details = serializers.DictField(help_text="per-field messages for a validation_error; else extra facts")


class ErrorSerializer(serializers.Serializer):
    """Every 4xx/5xx answer of the API has this body."""

    error = ErrorDetailSerializer()


ERRORS: dict[int, str] = {
    400: "`validation_error`: the request is malformed (unknown field, wrong type, bad query parameter); "
         "`details` names the fields.",
    401: "`authentication_failed`: no API key, or an invalid or revoked one.",
    402: "`budget_exceeded`: the company's or app's spending budget cannot cover this task.",
    404: "`not_found`: no such object for this key's company (another tenant's is never revealed).",
    409: "`conflict`: the request contradicts the object's state (or an earlier request with the same "
         "`Idempotency-Key`).",
    413: "`payload_too_large`: the body is over the limit; refused by its `Content-Length` before it is read.",
    415: "The body's `Content-Type` is not one this operation accepts.",
    429: "`rate_limited` (the app's request rate) or `queue_full` (the app's backlog); retry after "
         "`Retry-After` seconds.",
    503: "`unavailable`: a dependency (database, Redis) is down or the server is at capacity; retry after "
         "`Retry-After` seconds.",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Bearer realm="mageagent"'}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """Errors only some operations answer, for their `extend_schema(responses=...)`."""
    return {status: OpenApiResponse(ErrorSerializer, description=ERRORS[status]) for status in statuses}


class AutoSchema(SpectacularAutoSchema):
    def get_operation(self, path: str, path_regex: str, path_prefix: str, method: str,
                      registry: ComponentRegistry) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        # A view that renders its errors in another shape (the OpenAI-compatible API) names it.
        if "requestBody" in operation:
            # drf-spectacular marks a body required only when a field is; every body here is (an
            # empty one is a 400), even TaskInput's, which needs `prompt` or `messages`.
            operation["requestBody"]["required"] = True
        ref = self.resolve_serializer(getattr(self.view, "error_serializer", ErrorSerializer), "response").ref
        for status in self._error_statuses(operation):
            response = operation["responses"].setdefault(str(status), {"description": ERRORS[status]})
            response.setdefault("content", {"application/json": {"schema": ref}})
            if status in _HEADERS:
                response.setdefault("headers", _HEADERS[status])
        return operation

    def _error_statuses(self, operation: dict[str, Any]) -> list[int]:
        has_body = "requestBody" in operation
        takes_input = has_body or any(p["in"] != "path" for p in operation.get("parameters", []))
        statuses = [400] if takes_input else []
        if self.view.get_authenticators():
            statuses.append(401)
        if "{" in self.path:
            statuses.append(404)
        if has_body:
            statuses += [413, 415]
        if self.view.get_throttles():
            statuses.append(429)
        statuses.append(503)
        return statuses


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "mageagent.tenancy.auth.ApiKeyAuthentication"
    name = ["BearerAuth", "ApiKeyAuth"]

    def get_security_requirement(self, auto_schema: SpectacularAutoSchema) -> list[dict[str, list[Any]]]:
        return [{"BearerAuth": []}, {"ApiKeyAuth": []}]  # either one

    def get_security_definition(self, auto_schema: SpectacularAutoSchema) -> list[dict[str, Any]]:  # type: ignore[override]
        return [
            {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
            {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "`X-API-Key: <key>`"},
        ]


class StrictSerializerScheme(OpenApiSerializerExtension):
    target_class = "mageagent.serializers.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: SpectacularAutoSchema, direction: Any) -> dict[str, Any]:
        # drf-spectacular's documented way for an extension to get the schema it would make
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema["additionalProperties"] = False
        return schema



def error_response(status: int) -> dict[str, Any]:
    """An error response as an OpenAPI object, for an operation written by hand."""
    response: dict[str, Any] = {"description": ERRORS[status],
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response
