from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mageagent.tenancy.auth import request_tenant

from .selectors import model_list

ModelOutput = inline_serializer("CatalogModel", {
    "id": serializers.CharField(), "provider": serializers.CharField(),
    "context_window": serializers.IntegerField(), "max_output_tokens": serializers.IntegerField(),
    "input_cost_per_mtok": serializers.FloatField(), "output_cost_per_mtok": serializers.FloatField(),
    "supports_tools": serializers.BooleanField(), "supports_vision": serializers.BooleanField(),
    "supports_json": serializers.BooleanField(), "tier": serializers.IntegerField(allow_null=True),
    "enabled": serializers.BooleanField(),
})


class ModelListApi(APIView):
    @extend_schema(summary="The models the caller may use",
                   responses=inline_serializer("CatalogModels", {"results": ModelOutput.__class__(many=True)}))
    def get(self, request: Request) -> Response:
        return Response({"results": model_list(company_id=request_tenant(request).company_id)})
