"""Knowledge-base and file endpoints, included under the API prefix by mageagent/urls.py."""

from __future__ import annotations

from django.urls import path

from .apis import DocumentDetailApi, DocumentListCreateApi, FileDetailApi, FileListCreateApi, KnowledgeSearchApi

urlpatterns = [
    path("knowledge/documents", DocumentListCreateApi.as_view()),
    path("knowledge/documents/<str:document_id>", DocumentDetailApi.as_view()),
    path("knowledge/search", KnowledgeSearchApi.as_view()),
    path("files", FileListCreateApi.as_view()),
    path("files/<str:file_id>", FileDetailApi.as_view()),
]
