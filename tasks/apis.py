from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mageagent.openapi import error_responses
from mageagent.pagination import NewestFirstPagination
from mageagent.tenancy.auth import request_tenant

from . import selectors, services
from .follow import events_page
from .models import Task
from .serializers import (
    EventsQuerySerializer,
    TaskInputSerializer,
    TaskListFilterSerializer,
    TaskOutputSerializer,
)


class TaskListCreateApi(APIView):
    pagination_class = NewestFirstPagination

    @extend_schema(request=TaskInputSerializer,
                   responses={202: TaskOutputSerializer,
                              200: OpenApiResponse(TaskOutputSerializer, description=(
                                  "the task first created with this Idempotency-Key; nothing new was enqueued")),
                              **error_responses(402, 409)},
                   parameters=[OpenApiParameter(
                       "Idempotency-Key", str, OpenApiParameter.HEADER,
                       description="the same key from the same app within 24 h returns the original task (200)")],
                   summary="Enqueue a task")
    def post(self, request: Request) -> Response:
        data = TaskInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task, created = services.task_submit(tenant=request_tenant(request),
                                             idempotency_key=request.headers.get("Idempotency-Key") or None,
                                             **data.validated_data)
        return self._answer(task, created=created)

    @staticmethod
    def _answer(task: Task, *, created: bool) -> Response:
        return Response(TaskOutputSerializer(task).data, status=202 if created else 200,
                        headers={"Location": f"/mageagent/api/v1/tasks/{task.id}"})

    @extend_schema(parameters=[TaskListFilterSerializer], responses=TaskOutputSerializer(many=True),
                   summary="List the caller's tasks, newest first")
    def get(self, request: Request) -> Response:
        filters = TaskListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        params = {k: v for k, v in filters.validated_data.items() if k not in ("cursor", "page_size")}
        qs = selectors.task_list(tenant=request_tenant(request), **params)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(TaskOutputSerializer(page, many=True).data)


class TaskDetailApi(APIView):
    @extend_schema(responses=TaskOutputSerializer, summary="Get a task (the polling path)")
    def get(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(tenant=request_tenant(request), task_id=task_id)
        return Response(TaskOutputSerializer(task).data)


class TaskCancelApi(APIView):
    throttle_classes: list[type] = []  # a cancel stops spend: an app past its rate limit may still cancel

    @extend_schema(request=None, responses={200: TaskOutputSerializer, **error_responses(409)},
                   summary="Cancel a task")
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(tenant=request_tenant(request), task_id=task_id)
        return Response(TaskOutputSerializer(services.task_cancel(task=task)).data)


class TaskEventsApi(APIView):
    @extend_schema(
        # `token` is only tolerated here (a stream's URL reused); the key goes in a header.
        parameters=[EventsQuerySerializer, OpenApiParameter("token", exclude=True)],
        responses=inline_serializer("TaskEvents", {"events": serializers.ListField(child=serializers.DictField()),
                                                   "done": serializers.BooleanField()}),
        summary="The task's events after a sequence number",
    )
    def get(self, request: Request, task_id: str) -> Response:
        query = EventsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        task = selectors.task_get(tenant=request_tenant(request), task_id=task_id)
        return Response(events_page(task, after=query.validated_data["after"]))


class UsageQuerySerializer(serializers.Serializer):
    # `from` is a Python keyword: the field is named in __init__'s fields below.
    to = serializers.DateField(required=False, help_text="last UTC day included (ISO date); default today")
    group_by = serializers.ChoiceField(choices=selectors.USAGE_GROUPS, default="day")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = serializers.DateField(
            required=False, help_text="first UTC day included (ISO date); default 29 days before `to`")
        return fields

    def to_internal_value(self, data: Any) -> Any:
        # DRF reads an empty query value of an optional field as absent (its default): here
        # `?from=` is a malformed date, not "the default".
        blank = {name: ["may not be blank"] for name in ("from", "to", "group_by") if data.get(name) == ""}
        if blank:
            raise serializers.ValidationError(blank)
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("to") or datetime.now(UTC).date()
        start = attrs.get("from") or end - timedelta(days=USAGE_DEFAULT_DAYS - 1)
        if start > end:
            raise serializers.ValidationError({"from": "must not be after `to`"})
        return {"start": start, "end": end, "group_by": attrs["group_by"]}


USAGE_DEFAULT_DAYS = 30
UsageCounts: dict[str, serializers.Field] = {
    "tasks": serializers.DictField(child=serializers.IntegerField(),
                                   help_text="tasks created in the period by status (tasks not yet pruned)"),
    "tasks_started": serializers.IntegerField(help_text="tasks that ran (from the spend ledger, never pruned)"),
    "prompt_tokens": serializers.IntegerField(), "completion_tokens": serializers.IntegerField(),
    "cost_usd": serializers.FloatField(), "calls": serializers.IntegerField(help_text="provider calls"),
}


class UsageApi(APIView):
    @extend_schema(parameters=[UsageQuerySerializer], summary="The caller's company's usage",
                   responses=inline_serializer("Usage", {"from": serializers.DateField(), "to": serializers.DateField(),
                  "group_by": serializers.ChoiceField(choices=selectors.USAGE_GROUPS),
                  "results": inline_serializer("UsageRow", {
                      "day": serializers.DateField(required=False), "app": serializers.CharField(required=False),
                      "model": serializers.CharField(required=False), **UsageCounts}, many=True),
                  "totals": inline_serializer("UsageTotals", UsageCounts)}))
    def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        rows = selectors.usage_summary(company_id=request_tenant(request).company_id, start=q["start"],
                                       end=q["end"], group_by=q["group_by"])
        return Response({"from": q["start"].isoformat(), "to": q["end"].isoformat(), "group_by": q["group_by"],
                         "results": rows, "totals": _usage_totals(rows)})


def _usage_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"tasks": {}, "tasks_started": 0, "prompt_tokens": 0, "completion_tokens": 0,
                              "cost_usd": 0.0, "calls": 0}
    for r in rows:
        for status, n in r["tasks"].items():
            totals["tasks"][status] = totals["tasks"].get(status, 0) + n
        for name in ("tasks_started", "prompt_tokens", "completion_tokens", "calls"):
            totals[name] += r[name]
        totals["cost_usd"] = round(totals["cost_usd"] + r["cost_usd"], 9)
    return totals


_FAIR_COUNTS: dict[str, serializers.Field[Any, Any, Any, Any]] = {
    "weight": serializers.IntegerField(help_text="fair scheduling weight (admin)"),
    "waiting": serializers.IntegerField(help_text="tasks waiting in the fair queues for a worker"),
    "running": serializers.IntegerField(help_text="tasks handed to a worker (sent or running) and not ended"),
    "share": serializers.FloatField(help_text="this tenant's fraction of every tenant's running tasks"),
}
FairShare = inline_serializer("FairShare", {**_FAIR_COUNTS, "apps": serializers.ListField(
    child=inline_serializer("AppFairShare", {"app_id": serializers.CharField(), **_FAIR_COUNTS}))})


class QueueMetricsApi(APIView):
    @extend_schema(responses=inline_serializer("QueueMetrics", {
        **{name: serializers.FloatField(allow_null=True) for name in (
            "waiting", "active", "completed", "failed", "cancelled", "delayed", "avg_processing_ms",
            "p95_processing_ms", "throughput_per_min", "workers")},
        "fair": FairShare}), summary="Queue metrics for the caller's company")
    def get(self, request: Request) -> Response:
        return Response(selectors.queue_metrics(company_id=request_tenant(request).company_id))


RouteOutput = inline_serializer("RoutingDecision", {
    # Catalog ids (GET /models' `id`, what a task's `model` accepts), as in the Task's
    # `routing`; `result.model` is the `provider/name` label.
    "model": serializers.CharField(help_text="catalog id of the chosen model (GET /models `id`), e.g. gpt-4o-mini"),
    "provider": serializers.CharField(help_text="the chosen model's provider, e.g. openai"),
    "reason": serializers.CharField(),
    "candidates": serializers.ListField(child=serializers.CharField(), help_text="catalog ids, best first"),
    "estimated_cost_usd": serializers.FloatField(), "estimated_tokens": serializers.IntegerField(),
    "estimated_prompt_tokens": serializers.IntegerField(), "estimated_output_tokens": serializers.IntegerField(),
    "tier": serializers.IntegerField(allow_null=True), "characteristics": serializers.ListField(),
    "complexity": serializers.DictField(), "max_tokens": serializers.IntegerField(allow_null=True),
})


class TaskRouteApi(APIView):
    @extend_schema(request=TaskInputSerializer, responses=RouteOutput,
                   summary="Dry-run routing: the decision a task with this body would get")
    def post(self, request: Request) -> Response:
        data = TaskInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        decision = services.task_route_preview(tenant=request_tenant(request), **data.validated_data)
        return Response(decision.as_dict())
