from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .errors import ValidationFailed
from .serializers import StrictSerializer

INVALID_CURSOR = "invalid cursor: pass the `next` URL of a previous page unchanged"


class NewestFirstPagination(CursorPagination):
    """The contract's list shape: {"results": [...], "next": "url or null"}, newest first."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    # DRF answers a bad cursor with 404; it is a malformed query parameter, so a 400.
    def decode_cursor(self, request: Request) -> Cursor | None:
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ValidationFailed(INVALID_CURSOR, details={"cursor": [INVALID_CURSOR]}) from None

    def paginate_queryset(self, queryset: Any, request: Request, view: APIView | None = None) -> list[Any] | None:
        try:
            return super().paginate_queryset(queryset, request, view)
        except DjangoValidationError:  # a well-encoded cursor whose position is not a timestamp
            raise ValidationFailed(INVALID_CURSOR, details={"cursor": [INVALID_CURSOR]}) from None

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next": self.get_next_link()})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        # drf-spectacular documents a view's list with this when the view names the paginator
        # as its `pagination_class`.
        return {
            "type": "object",
            "required": ["results", "next"],
            "properties": {
                "results": schema,
                "next": {"type": "string", "format": "uri", "nullable": True,
                         "description": "the next page's URL, to follow unchanged; null on the last page"},
            },
        }


class PageQuerySerializer(StrictSerializer):
    """A list's query: a malformed page_size is a 400, as on every other parameter."""

    cursor = serializers.CharField(required=False, help_text="the `next` URL's cursor, unchanged")
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=NewestFirstPagination.max_page_size)

