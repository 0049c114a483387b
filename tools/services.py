from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from datetime import timedelta
from typing import Any

from django.core.files.storage import Storage, storages
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from mageagent.errors import PayloadTooLarge, StorageQuotaExceeded, ValidationFailed
from mageagent.tenancy.models import Company

from .conf import knob
from .extract import ExtractionError, detect_kind, extract_text
from .knowledge import chunk_text
from .models import Chunk, Document, StoredFile
from .selectors import document_get, file_get

logger = logging.getLogger(__name__)


def _clean_name(name: str, default: str) -> str:
    name = re.sub(r"[\x00-\x1f\x7f]", "", os.path.basename(name or "")).strip()
    return name[:255] or default


def _read_upload(upload: UploadedFile, limit: int) -> bytes:
    if (upload.size or 0) > limit:
        raise PayloadTooLarge(f"the file is larger than the {limit}-byte limit", details={"max_bytes": limit})
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the file is larger than the {limit}-byte limit", details={"max_bytes": limit})
    return data


@transaction.atomic
def document_create(*, company_id: int, title: str, content: str, metadata: dict[str, Any] | None = None,
                    source: str = "text", content_type: str = "text/plain") -> Document:
    chunks = chunk_text(content, size=knob("KNOWLEDGE_CHUNK_CHARS"))
    if not chunks:
        raise ValidationFailed("the document has no text to index", details={"content": ["empty"]})
    title = title.strip()[:300] or chunks[0].splitlines()[0][:80]
    document = Document.objects.create(company_id=company_id, title=title, source=source,
                                       content_type=content_type[:120], metadata=metadata or {}, chars=len(content))
    Chunk.objects.bulk_create(
        [Chunk(document=document, company_id=company_id, position=i, content=c) for i, c in enumerate(chunks)],
        batch_size=500)
    document.chunk_count = len(chunks)  # type: ignore[attr-defined]
    return document


def document_create_from_text(*, company_id: int, title: str, content: str,
                              metadata: dict[str, Any] | None = None) -> Document:
    """A document sent as text (POST /documents in JSON): at most KNOWLEDGE_MAX_BYTES of UTF-8."""
    limit = knob("KNOWLEDGE_MAX_BYTES")
    if len(content.encode()) > limit:
        raise PayloadTooLarge(f"the content is larger than the {limit}-byte limit", details={"max_bytes": limit})
    return document_create(company_id=company_id, title=title, content=content, metadata=metadata)


def document_create_from_file(*, company_id: int, upload: UploadedFile, title: str = "",
                              metadata: dict[str, Any] | None = None) -> Document:
    data = _read_upload(upload, knob("KNOWLEDGE_MAX_BYTES"))
    name = _clean_name(upload.name or "", "document")
    try:
        kind, text = extract_text(data, content_type=upload.content_type or "", name=name)
    except ExtractionError as exc:
        raise ValidationFailed(str(exc), details={"file": [str(exc)]}) from None
    return document_create(company_id=company_id, title=title or name, content=text,
                           metadata={**(metadata or {}), "filename": name}, source="file",
                           content_type=upload.content_type or kind)


@transaction.atomic
def document_delete(*, company_id: int, document_id: str) -> None:
    document_get(company_id=company_id, document_id=document_id).delete()


def _files() -> Storage:
    return storages["files"]


SNIFF_BYTES = 2048
_KIND_TYPES = {"pdf": "application/pdf", "html": "text/html",
               "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}


def _content_type(head: bytes, *, declared: str, name: str) -> str:
    """What the bytes are, not what the client says: a label that contradicts them (a PDF sent
    as image/png) would send file_processing down the wrong path."""
    kind = detect_kind(head, content_type=declared, name=name)
    if kind in _KIND_TYPES:
        return _KIND_TYPES[kind]
    declared = declared.split(";")[0].strip().lower()
    if kind == "image":
        return declared if declared.startswith("image/") else "application/octet-stream"
    if kind == "text":
        return declared if declared.startswith("text/") or declared.endswith(("json", "xml")) else "text/plain"
    return declared if declared and not declared.startswith(("text/", "image/")) else "application/octet-stream"


def _digest(upload: UploadedFile, limit: int) -> tuple[str, int, bytes]:
    """sha256, size and first bytes of the upload, read in chunks (Django spools large uploads
    to a temporary file, so nothing holds the whole file in memory)."""
    digest, size, head = hashlib.sha256(), 0, b""
    for chunk in upload.chunks():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the file is larger than the {limit}-byte limit", details={"max_bytes": limit})
        if len(head) < SNIFF_BYTES:
            head += chunk[:SNIFF_BYTES - len(head)]
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest(), size, head


def _check_quota(company_id: int, size: int) -> None:
    """Must run in the transaction that records the upload: the company's row is locked (FOR NO
    KEY UPDATE, which new tasks' foreign-key checks do not wait for) so that concurrent uploads
    of one company are counted one after the other."""
    quota = knob("FILES_QUOTA_BYTES")
    if not quota:
        return
    Company.objects.select_for_update(no_key=True).filter(pk=company_id).first()
    used = StoredFile.objects.filter(company_id=company_id).aggregate(total=Sum("size"))["total"] or 0
    if used + size > quota:
        raise StorageQuotaExceeded(
            f"the company's files would use {used + size} bytes, over its {quota}-byte quota; "
            "delete files (DELETE /files/{id}) to make room",
            details={"quota_bytes": quota, "used_bytes": used, "file_bytes": size})


def file_store(*, company_id: int, upload: UploadedFile) -> StoredFile:
    """Stores the upload under a server-chosen key, <company>/<uuid> (never a client path), in
    the configured storage, streamed and written once; the row is recorded once the bytes
    are there, so a worker that finds the row finds the file."""
    limit = knob("FILES_MAX_BYTES")
    if (upload.size or 0) > limit:
        raise PayloadTooLarge(f"the file is larger than the {limit}-byte limit", details={"max_bytes": limit})
    sha256, size, head = _digest(upload, limit)
    name = _clean_name(upload.name or "", "upload")
    file_id = uuid.uuid4()
    key = _files().save(f"{company_id}/{file_id.hex}", upload)
    try:
        with transaction.atomic():
            _check_quota(company_id, size)
            return StoredFile.objects.create(
                id=file_id, company_id=company_id, name=name, size=size, sha256=sha256, path=key,
                content_type=_content_type(head, declared=upload.content_type or "", name=name)[:120])
    except BaseException:
        _files().delete(key)
        raise


def file_read(*, stored: StoredFile) -> bytes:
    """The file's bytes, from whichever machine stored them (the storage is shared)."""
    with _files().open(stored.path, "rb") as f:
        data: bytes = f.read()
    return data


def file_delete(*, company_id: int, file_id: str) -> None:
    stored = file_get(company_id=company_id, file_id=file_id)
    _file_rows_delete(StoredFile.objects.filter(pk=stored.pk))


def _file_rows_delete(rows: QuerySet[StoredFile]) -> int:
    """Deletes the rows, then their bytes once that is committed: a failed transaction keeps
    both; a storage that fails to delete leaves an orphan object, never a row without bytes."""
    paths = list(rows.values_list("path", flat=True))
    deleted, _ = rows.delete()

    def remove() -> None:
        for path in paths:
            try:
                _files().delete(path)
            except Exception:
                logger.exception("could not delete the stored file %s", path)

    transaction.on_commit(remove)
    return deleted


def files_prune() -> int:
    """Uploads older than FILES_RETENTION_DAYS, and beyond the newest FILES_RETENTION_MAX of
    each company, go (rows and bytes), with the same housekeeping run that prunes tasks."""
    cutoff = timezone.now() - timedelta(days=knob("FILES_RETENTION_DAYS"))
    deleted = _file_rows_delete(StoredFile.objects.filter(created_at__lt=cutoff))
    keep = knob("FILES_RETENTION_MAX")
    crowded = (StoredFile.objects.values("company_id").annotate(n=Count("id")).filter(n__gt=keep)
               .values_list("company_id", flat=True))
    for company_id in crowded:
        newest = (StoredFile.objects.filter(company_id=company_id).order_by("-created_at")
                  .values_list("created_at", flat=True)[keep:keep + 1])
        if newest:
            deleted += _file_rows_delete(StoredFile.objects.filter(company_id=company_id,
                                                                   created_at__lte=newest[0]))
    return deleted
