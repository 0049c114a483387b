from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from mageagent.errors import PayloadTooLarge, ValidationFailed

from .conf import knob
from .extract import ExtractionError, extract_text
from .knowledge import chunk_text
from .models import Chunk, Document, StoredFile
from .selectors import document_get


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


def _files_dir() -> Path:
    return Path(knob("FILES_DIR"))


def file_store(*, company_id: int, upload: UploadedFile) -> StoredFile:
    """Writes the upload under FILES_DIR/<company>/<uuid> (never a client-chosen path)."""
    limit = knob("FILES_MAX_BYTES")
    if (upload.size or 0) > limit:
        raise PayloadTooLarge(f"the file is larger than the {limit}-byte limit", details={"max_bytes": limit})
    file_id = uuid.uuid4()
    relative = Path(str(company_id)) / file_id.hex
    target = _files_dir() / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    try:
        with open(target, "xb") as out:
            for chunk in upload.chunks():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the file is larger than the {limit}-byte limit",
                                          details={"max_bytes": limit})
                digest.update(chunk)
                out.write(chunk)
        return StoredFile.objects.create(
            id=file_id, company_id=company_id, name=_clean_name(upload.name or "", "upload"), size=size,
            content_type=(upload.content_type or "application/octet-stream")[:120], sha256=digest.hexdigest(),
            path=str(relative))
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def file_read(*, stored: StoredFile) -> bytes:
    return (_files_dir() / stored.path).read_bytes()
