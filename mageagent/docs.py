"""Where a visitor lands: the API's index and the documentation pages, all without a key."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

_PUBLIC: dict[str, list[type]] = {"authentication_classes": [], "permission_classes": [], "throttle_classes": []}

schema_view = SpectacularAPIView.as_view(**_PUBLIC)
swagger_view = SpectacularSwaggerView.as_view(url_name="schema", **_PUBLIC)
redoc_view = SpectacularRedocView.as_view(url_name="schema", template_name="mageagent/redoc.html", **_PUBLIC)

_LINKS = ("docs", "redoc", "schema", "healthz", "readyz", "console")


class ApiIndexApi(APIView):
    authentication_classes: list[type] = []
    permission_classes: list[type] = []
    throttle_classes: list[type] = []

    @extend_schema(operation_id="api_index", summary="Where the documentation, the schema and the health checks are",
                   responses=inline_serializer("ApiIndex", {
                       "name": serializers.CharField(), "version": serializers.CharField(),
                       "links": inline_serializer("ApiIndexLinks", {
                           name: serializers.URLField() for name in _LINKS})}))
    def get(self, request: Request) -> Response:
        links = {name: request.build_absolute_uri(reverse(name)) for name in _LINKS}
        return Response({"name": "MageAgent API", "version": "v1", "links": links})
