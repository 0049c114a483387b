from __future__ import annotations

import uuid

from django.db import models

from mageagent.tenancy.models import Company


class Document(models.Model):
    """One entry of a company's knowledge base; its text lives in its chunks."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    source = models.CharField(max_length=16, default="text")  # text | file
    content_type = models.CharField(max_length=120, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    chars = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=("company", "-created_at"), name="tools_doc_company_created")]

    def __str__(self) -> str:
        return self.title


class Chunk(models.Model):
    """A searchable piece of a document. The full-text index over `content` is created by
    migration 0002 (a GIN index on PostgreSQL, an FTS5 table on SQLite)."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    # Denormalised so that a search filters one table by tenant.
    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField()
    content = models.TextField()

    class Meta:
        ordering = ("document_id", "position")
        constraints = [models.UniqueConstraint(fields=("document", "position"), name="tools_chunk_unique_position")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.position}"


class StoredFile(models.Model):
    """An upload for file_processing; its bytes are in the "files" storage (settings.STORAGES)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()
    content_type = models.CharField(max_length=120, blank=True)
    sha256 = models.CharField(max_length=64)
    path = models.CharField(max_length=300)  # the storage's key: <company>/<uuid>
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=("company", "-created_at"), name="tools_file_company_created")]

    def __str__(self) -> str:
        return self.name
