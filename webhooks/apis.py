from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mageagent.pagination import NewestFirstPagination, PageQuerySerializer
from mageagent.serializers import StrictCharField, StrictSerializer
from mageagent.tenancy.auth import request_tenant

from . import selectors, services
from .models import EVENT_TYPES, Delivery, Webhook


class WebhookOutputSerializer(serializers.ModelSerializer):
    events = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = Webhook
        fields: tuple[str, ...] = ("id", "url", "events", "is_active", "disabled_at", "disabled_reason",
                                   "created_at")


class WebhookWithSecretSerializer(WebhookOutputSerializer):
    """The one answer that shows the secret: at creation and after a rotation."""

    class Meta(WebhookOutputSerializer.Meta):
        fields = (*WebhookOutputSerializer.Meta.fields, "secret")


class WebhookListCreateApi(APIView):
    pagination_class = NewestFirstPagination  # documents the list as a page (drf-spectacular)

    class InputSerializer(StrictSerializer):
        url = StrictCharField(max_length=2000)
        events = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPES), min_length=1,
                                       required=False, default=list(EVENT_TYPES))

        def validate_url(self, value: str) -> str:
            return str(serializers.URLField().run_validation(value))

        def validate_events(self, value: list[str]) -> list[str]:
            if len(set(value)) != len(value):
                raise serializers.ValidationError("must not repeat an event type")
            return value

    @extend_schema(request=InputSerializer, responses={201: WebhookWithSecretSerializer},
                   summary="Register an endpoint for the app's task events (the secret is shown once)")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        webhook = services.webhook_create(tenant=request_tenant(request), **data.validated_data)
        return Response(WebhookWithSecretSerializer(webhook).data, status=201)

    @extend_schema(parameters=[PageQuerySerializer], responses=WebhookOutputSerializer(many=True),
                   summary="The app's webhooks, newest first")
    def get(self, request: Request) -> Response:
        PageQuerySerializer(data=request.query_params).is_valid(raise_exception=True)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.webhook_list(tenant=request_tenant(request)), request, view=self)
        return paginator.get_paginated_response(WebhookOutputSerializer(page, many=True).data)


class WebhookDetailApi(APIView):
    @extend_schema(responses=WebhookOutputSerializer, summary="Get a webhook")
    def get(self, request: Request, webhook_id: str) -> Response:
        return Response(WebhookOutputSerializer(
            selectors.webhook_get(tenant=request_tenant(request), webhook_id=webhook_id)).data)

    @extend_schema(responses={204: None}, summary="Delete a webhook (its pending deliveries are dropped)")
    def delete(self, request: Request, webhook_id: str) -> Response:
        services.webhook_delete(webhook=selectors.webhook_get(tenant=request_tenant(request), webhook_id=webhook_id))
        return Response(status=204)


class WebhookRotateSecretApi(APIView):
    @extend_schema(request=None, responses=WebhookWithSecretSerializer,
                   summary="A new secret; the old one also signs for WEBHOOK_ROTATION_GRACE_S")
    def post(self, request: Request, webhook_id: str) -> Response:
        webhook = selectors.webhook_get(tenant=request_tenant(request), webhook_id=webhook_id)
        return Response(WebhookWithSecretSerializer(services.webhook_rotate_secret(webhook=webhook)).data)


class DeliveryOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="msg_id")  # the webhook-id header the receiver saw
    task_id = serializers.UUIDField()

    class Meta:
        model = Delivery
        fields = ("id", "event_type", "task_id", "status", "attempts", "last_status_code", "last_error",
                  "next_attempt_at", "created_at", "delivered_at")


class DeliveryListApi(APIView):
    pagination_class = NewestFirstPagination  # documents the list as a page (drf-spectacular)

    @extend_schema(parameters=[PageQuerySerializer], responses=DeliveryOutputSerializer(many=True),
                   summary="A webhook's deliveries, newest first")
    def get(self, request: Request, webhook_id: str) -> Response:
        PageQuerySerializer(data=request.query_params).is_valid(raise_exception=True)
        webhook = selectors.webhook_get(tenant=request_tenant(request), webhook_id=webhook_id)
        paginator = self.pagination_class()
        page: Any = paginator.paginate_queryset(selectors.delivery_list(webhook=webhook), request, view=self)
        return paginator.get_paginated_response(DeliveryOutputSerializer(page, many=True).data)
