from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mageagent.errors import PayloadTooLarge, ValidationFailed
from mageagent.pagination import NewestFirstPagination, PageQuerySerializer
from mageagent.parsers import JSONParser
from mageagent.serializers import JsonObjectField, StrictCharField, StrictSerializer

from . import selectors, services
from .conf import knob
from .knowledge import knowledge_retrieve
from .registry import tools_list

# Multipart framing and form fields around the file itself.
ENVELOPE_BYTES = 64 * 1024


def _company_id(request: Request) -> int:
    company_id = getattr(request.user, "company_id", None)
    if company_id is None:
        raise ValidationFailed("this endpoint needs a company's API key")
    return int(company_id)


def _refuse_large_body(request: Request, limit: int) -> None:
    """Refuse before reading: the declared length already says the body is too large."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit + ENVELOPE_BYTES:
        raise PayloadTooLarge(f"the request is larger than the {limit}-byte limit", details={"max_bytes": limit})


class ToolListApi(APIView):
    @extend_schema(summary="The tools a task may request, with JSON-schema parameters",
                   responses=inline_serializer("ToolList", {"results": inline_serializer("Tool", {
                       "name": serializers.CharField(), "description": serializers.CharField(),
                       "parameters": serializers.DictField(), "available": serializers.BooleanField(),
                       "unavailable_reason": serializers.CharField(allow_null=True)}, many=True)}))
    def get(self, request: Request) -> Response:
        return Response({"results": tools_list()})




class DocumentListCreateApi(APIView):
    pagination_class = NewestFirstPagination
    parser_classes = [JSONParser, MultiPartParser]  # the API's default is JSON only

    @extend_schema_serializer(component_name="KnowledgeDocumentText")
    class TextInputSerializer(StrictSerializer):
        title = StrictCharField(max_length=300, required=False, allow_blank=True, default="")
        content = StrictCharField(trim_whitespace=False)
        metadata = serializers.DictField(required=False, default=dict)

    @extend_schema_serializer(component_name="KnowledgeDocumentFile")
    class FileInputSerializer(StrictSerializer):
        file = serializers.FileField()
        title = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")
        metadata = JsonObjectField(required=False, default=dict)

    @extend_schema_serializer(component_name="KnowledgeDocument")
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        title = serializers.CharField()
        chunks = serializers.IntegerField(source="chunk_count")
        source = serializers.CharField()  # type: ignore[assignment]
        content_type = serializers.CharField()
        chars = serializers.IntegerField()
        metadata = serializers.DictField()
        created_at = serializers.DateTimeField()

    @extend_schema(request={"application/json": TextInputSerializer, "multipart/form-data": FileInputSerializer},
                   responses={201: OutputSerializer}, summary="Add a document to the company's knowledge base")
    def post(self, request: Request) -> Response:
        company_id = _company_id(request)
        limit = knob("KNOWLEDGE_MAX_BYTES")
        _refuse_large_body(request, limit)
        if (request.content_type or "").startswith("multipart/"):
            form = self.FileInputSerializer(data=request.data)
            form.is_valid(raise_exception=True)
            fields = form.validated_data
            document = services.document_create_from_file(company_id=company_id, upload=fields["file"],
                                                          title=fields["title"], metadata=fields["metadata"])
        else:
            text = self.TextInputSerializer(data=request.data)
            text.is_valid(raise_exception=True)
            document = services.document_create_from_text(company_id=company_id, **text.validated_data)
        return Response(self.OutputSerializer(document).data, status=201)

    @extend_schema(parameters=[PageQuerySerializer], responses=OutputSerializer(many=True),
                   summary="The company's knowledge-base documents")
    def get(self, request: Request) -> Response:
        PageQuerySerializer(data=request.query_params).is_valid(raise_exception=True)
        documents = selectors.document_list(company_id=_company_id(request))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(documents, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class DocumentDetailApi(APIView):
    @extend_schema(responses=DocumentListCreateApi.OutputSerializer, summary="One knowledge-base document")
    def get(self, request: Request, document_id: str) -> Response:
        document = selectors.document_get(company_id=_company_id(request), document_id=document_id)
        return Response(DocumentListCreateApi.OutputSerializer(document).data)

    @extend_schema(responses={204: None}, summary="Remove a document from the knowledge base")
    def delete(self, request: Request, document_id: str) -> Response:
        services.document_delete(company_id=_company_id(request), document_id=document_id)
        return Response(status=204)


class KnowledgeSearchApi(APIView):
    @extend_schema_serializer(component_name="KnowledgeSearchInput")
    class InputSerializer(StrictSerializer):
        query = StrictCharField(max_length=2000)
        limit = serializers.IntegerField(min_value=1, max_value=50, default=5)

    @extend_schema(request=InputSerializer, responses=inline_serializer("KnowledgeSearchResults", {
        "results": inline_serializer("KnowledgeHit", {
            "document_id": serializers.CharField(), "title": serializers.CharField(),
            "content": serializers.CharField(), "score": serializers.FloatField()}, many=True)}),
        summary="Search the company's knowledge base (what graphrag_search and context.useGraphRAG use)")
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response({"results": knowledge_retrieve(company_id=_company_id(request), **data.validated_data)})


class FileListCreateApi(APIView):
    parser_classes = [JSONParser, MultiPartParser]
    pagination_class = NewestFirstPagination  # documents the list as a page (drf-spectacular)

    @extend_schema_serializer(component_name="FileUpload")
    class InputSerializer(StrictSerializer):
        file = serializers.FileField()

    @extend_schema_serializer(component_name="StoredFile")
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        name = serializers.CharField()
        size = serializers.IntegerField()
        content_type = serializers.CharField()
        sha256 = serializers.CharField()
        created_at = serializers.DateTimeField()

    @extend_schema(request={"multipart/form-data": InputSerializer}, responses={201: OutputSerializer},
                   summary="Upload a file for the file_processing tool")
    def post(self, request: Request) -> Response:
        company_id = _company_id(request)
        _refuse_large_body(request, knob("FILES_MAX_BYTES"))
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        stored = services.file_store(company_id=company_id, upload=data.validated_data["file"])
        return Response(self.OutputSerializer(stored).data, status=201)

    @extend_schema(parameters=[PageQuerySerializer], responses=OutputSerializer(many=True),
                   summary="The company's uploaded files, newest first")
    def get(self, request: Request) -> Response:
        PageQuerySerializer(data=request.query_params).is_valid(raise_exception=True)
        files = selectors.file_list(company_id=_company_id(request))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(files, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class FileDetailApi(APIView):
    @extend_schema(responses=FileListCreateApi.OutputSerializer, summary="One uploaded file")
    def get(self, request: Request, file_id: str) -> Response:
        stored = selectors.file_get(company_id=_company_id(request), file_id=file_id)
        return Response(FileListCreateApi.OutputSerializer(stored).data)

    @extend_schema(responses={204: None}, summary="Delete an uploaded file (its row and its bytes)")
    def delete(self, request: Request, file_id: str) -> Response:
        services.file_delete(company_id=_company_id(request), file_id=file_id)
        return Response(status=204)
