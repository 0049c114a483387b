"""The OpenAI-compatible API at /v1. Thin: validate, translate (services.py), submit or
cancel through tasks.services, answer in OpenAI's shapes. A streamed answer is served by
the event loop from the task's event log (streams.py); a plain one waits there too
(DeferredResponse), holding no request thread while the model works."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mageagent.handlers import DeferredResponse, stream_db
from mageagent.openapi import ERRORS
from mageagent.tenancy.auth import request_tenant
from tasks import selectors
from tasks.models import Task, TaskStatus
from tasks.services import task_cancel, task_delete, task_submit

from . import services, streams
from .errors import OpenAIErrorSerializer, openai_error, openai_error_response, openai_exception_handler
from .serializers import ChatCompletionInputSerializer, ResponseCreateInputSerializer, ResponseStreamQuerySerializer

OPENAI_TAG = ["OpenAI-compatible (/v1)"]


# Before OpenAPI 3.2 (itemSchema), a text/event-stream schema describes one event of the stream.
_SSE_EVENT: dict[str, Any] = {
    "type": "object", "required": ["data"],
    "properties": {"event": {"type": "string", "description": "the event's `type` (Responses API)"},
                   "data": {"type": "string", "description": "the event object as JSON, or `[DONE]`"},
                   "id": {"type": "string"}}}


def _errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Errors only some operations answer, in OpenAI's error shape."""
    descriptions = {**ERRORS, 502: "the task failed at the provider (`provider_error`, ...)"}
    return {status: OpenApiResponse(OpenAIErrorSerializer, description=descriptions[status]) for status in statuses}
# A finished task's error as an HTTP status: the request was fine, the run was not.
_FAILED_STATUS = {"budget_exceeded": 402, "context_window_exceeded": 400, "rate_limited": 429}


class OpenAIApiView(APIView):
    error_serializer = OpenAIErrorSerializer  # the schema's error responses (mageagent/openapi.py)

    def get_exception_handler(self) -> Any:
        return openai_exception_handler


def _event_stream(content: Any) -> StreamingHttpResponse:
    response = StreamingHttpResponse(content, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _json(body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), content_type="application/json")


def _failure(task_id: str, done: dict[str, Any]) -> HttpResponse:
    if done["status"] == TaskStatus.CANCELLED:
        return openai_error_response(message="the task was cancelled", code="cancelled", status=409, retry=False)
    error = done.get("error") or {}
    code = str(error.get("code") or "provider_error")
    return openai_error_response(message=f"{error.get('message') or code} (task {task_id})", code=code,
                                 status=_FAILED_STATUS.get(code, 502), retry=False)


def _deferred(task: Task, render: Any, *, cancel_on_leave: bool) -> DeferredResponse:
    """The answer once the task is done, awaited on the event loop."""
    task_id = str(task.id)

    async def resolve() -> HttpResponseBase:
        try:
            done = await streams.wait_done(task_id)
        except BaseException:
            if cancel_on_leave:  # the client went away (or the server is stopping)
                streams.cancel_in_background(task_id)
            raise
        finished = await stream_db(selectors.task_fetch)(task_id)
        if finished is None:
            return openai_error_response(message="the task was deleted", code="not_found", status=404)
        return render(finished, done)

    return DeferredResponse(resolve)


class ModelListOpenAIApi(OpenAIApiView):
    @extend_schema(tags=OPENAI_TAG, summary="The models the key may use, plus auto (OpenAI's list shape)",
                   responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        return Response(services.models_openai(tenant=request_tenant(request)))


class ModelDetailOpenAIApi(OpenAIApiView):
    @extend_schema(tags=OPENAI_TAG, summary="One model", responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, model_id: str) -> Response:
        for model in services.models_openai(tenant=request_tenant(request))["data"]:
            if model["id"] == model_id:
                return Response(model)
        return Response(openai_error(message=f"no such model: {model_id}", code="model_not_found", status=404,
                                     param="model"), status=404)


class ChatCompletionsApi(OpenAIApiView):
    @extend_schema(tags=OPENAI_TAG, request=ChatCompletionInputSerializer,
                   responses={(200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT,
                                                                         description="a chat.completion"),
                              (200, "text/event-stream"): OpenApiResponse(
                                  _SSE_EVENT, description="with stream: true, chat.completion.chunk "
                                                                "events ending in [DONE]"),
                              # 409: the same Idempotency-Key with another body, or the task cancelled
                              **_errors(402, 409, 502)},
                   parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
                   summary="Create a chat completion (a task of the key's app)")
    def post(self, request: Request) -> HttpResponseBase:
        data = ChatCompletionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        body = data.validated_data
        task, _ = task_submit(tenant=request_tenant(request), idempotency_key=request.headers.get("Idempotency-Key"),
                              **services.chat_task_fields(body))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return _event_stream(streams.chat_stream(task, include_usage=include_usage))
        return _deferred(task, self._render, cancel_on_leave=True)

    @staticmethod
    def _render(task: Task, done: dict[str, Any]) -> HttpResponse:
        if done["status"] != TaskStatus.COMPLETED:
            return _failure(str(task.id), done)
        return _json(services.chat_completion(task))


class ResponseCreateApi(OpenAIApiView):
    @extend_schema(tags=OPENAI_TAG, request=ResponseCreateInputSerializer,
                   responses={(200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT,
                                                                         description="a response object"),
                              (200, "text/event-stream"): OpenApiResponse(
                                  _SSE_EVENT, description="with stream: true, the response's events"),
                              # 404: no such previous_response_id
                              **_errors(402, 404, 409, 502)},
                   parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
                   summary="Create a response (background, streamed or plain; a task of the key's app)")
    def post(self, request: Request) -> HttpResponseBase:
        data = ResponseCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        body = data.validated_data
        tenant = request_tenant(request)
        task, _ = task_submit(tenant=tenant, idempotency_key=request.headers.get("Idempotency-Key"),
                              **services.response_task_fields(body, tenant=tenant))
        background = body.get("background", False)
        if body.get("stream"):
            # A background response runs on when its stream breaks (resume with starting_after);
            # a foreground one is the client's to hold.
            leave = None if background else streams.cancel_in_background
            return _event_stream(streams.response_stream(task, on_leave=leave))
        if background:
            return _json(services.response_object(task))
        return _deferred(task, lambda finished, _: _json(services.response_object(finished)), cancel_on_leave=True)


class ResponseDetailApi(OpenAIApiView):
    @extend_schema(tags=OPENAI_TAG, parameters=[ResponseStreamQuerySerializer],
                   responses={(200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT,
                                                                         description="the response object"),
                              (200, "text/event-stream"): OpenApiResponse(
                                  _SSE_EVENT, description="with stream=true, its events after starting_after")},
                   summary="Get a response; stream=true&starting_after=N resumes its event stream exactly")
    def get(self, request: Request, response_id: str) -> HttpResponseBase:
        query = ResponseStreamQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        task = services.response_task(tenant=request_tenant(request), raw_id=response_id)
        if query.validated_data["stream"]:
            return _event_stream(streams.response_stream(task, starting_after=query.validated_data["starting_after"]))
        return _json(services.response_object(task))

    # drf-spectacular documents a DELETE as 204; OpenAI (and this view) answer 200 with a body.
    @extend_schema(tags=OPENAI_TAG, responses={200: OpenApiResponse(OpenApiTypes.OBJECT,
                                                                     description="{id, object, deleted: true}")},
                   summary="Delete a response (cancels it if running)")
    def delete(self, request: Request, response_id: str) -> HttpResponseBase:
        task = services.response_task(tenant=request_tenant(request), raw_id=response_id)
        task_delete(task=task)
        return _json({"id": response_id, "object": "response", "deleted": True})


class ResponseCancelApi(OpenAIApiView):
    throttle_classes: list[type] = []  # a cancel stops spend, as on the native API

    @extend_schema(tags=OPENAI_TAG, request=None,
                   responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="the response object"),
                              **_errors(409)},  # it already completed or failed
                   summary="Cancel a response")
    def post(self, request: Request, response_id: str) -> HttpResponseBase:
        task = services.response_task(tenant=request_tenant(request), raw_id=response_id)
        return _json(services.response_object(task_cancel(task=task)))
