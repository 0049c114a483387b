from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mageagent.tenancy.auth import request_tenant
from tasks.serializers import TaskInputSerializer

from .budgets import budget_context
from .selectors import model_list
from .services import model_select, model_validate

ModelOutput = inline_serializer("CatalogModel", {
    "id": serializers.CharField(), "provider": serializers.CharField(),
    "context_window": serializers.IntegerField(), "max_output_tokens": serializers.IntegerField(),
    "input_cost_per_mtok": serializers.FloatField(), "output_cost_per_mtok": serializers.FloatField(),
    "supports_tools": serializers.BooleanField(), "supports_vision": serializers.BooleanField(),
    "supports_json": serializers.BooleanField(), "tier": serializers.IntegerField(allow_null=True),
    "enabled": serializers.BooleanField(),
})
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


class ModelListApi(APIView):
    @extend_schema(summary="The models the caller may use",
                   responses=inline_serializer("CatalogModels", {"results": ModelOutput.__class__(many=True)}))
    def get(self, request: Request) -> Response:
        return Response({"results": model_list(company_id=request_tenant(request).company_id)})


class RouteApi(APIView):
    @extend_schema(request=TaskInputSerializer, responses=RouteOutput,
                   summary="Dry-run routing: the decision a task with this body would get")
    def post(self, request: Request) -> Response:
        data = TaskInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        tenant = request_tenant(request)
        model_validate(tenant=tenant, model=fields["model"])
        budgeted = tenant.company_id is not None and budget_context(
            company_id=tenant.company_id, app_id=tenant.app_id).active
        decision = model_select(prompt=fields["prompt"], model=fields["model"], tools=fields["tools"],
                                context_text=(fields.get("context") or {}).get("additionalContext") or "",
                                company_id=tenant.company_id, budgeted=budgeted)
        return Response(decision.as_dict())
