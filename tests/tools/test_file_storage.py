"""Uploads through Django's storage API, on the file system and on an S3-compatible store
(moto's server, over real HTTP): the same upload → file_processing → delete behaviour,
quotas, content sniffing and retention on both."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from tests.tools.conftest import filesystem_storage, s3_bucket, s3_storage
from tests.tools.documents import make_pdf
from tools.models import StoredFile
from tools.registry import ToolContext, tool_invoke
from tools.services import files_prune

FILES = "/mageagent/api/v1/files"


@pytest.fixture(params=["filesystem", "s3"])
def backend(request, files_storage, tmp_path) -> str:
    if request.param == "s3":
        files_storage(s3_storage(request.getfixturevalue("s3_server"), s3_bucket(request.getfixturevalue("s3_server"))))
    else:
        files_storage(filesystem_storage(str(tmp_path / "files")))
    assert type(storages["files"]).__name__ == {"s3": "S3Storage", "filesystem": "FileSystemStorage"}[request.param]
    return request.param


def upload(api, persona, name: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
    return api.post(FILES, {"file": SimpleUploadedFile(name, data, content_type=content_type)},
                    format="multipart", headers=persona.headers)


def stored_keys() -> list[str]:
    files = storages["files"]
    keys: list[str] = []
    for company in files.listdir("")[0]:
        keys += [f"{company}/{name}" for name in files.listdir(company)[1]]
    return keys


@pytest.mark.django_db(transaction=True)
def test_an_upload_is_processed_listed_and_deleted(api, alice, backend):
    created = upload(api, alice, "notes.txt", b"The quarterly figures are final.", "text/plain")
    assert created.status_code == 201, created.content
    file_id = created.json()["id"]

    listed = api.get(FILES, headers=alice.headers).json()
    result = _run(tool_invoke("file_processing", json.dumps({"operation": "extract_text", "file_id": file_id}),
                              ToolContext("t", alice.tenant.company_id)))
    deleted = api.delete(f"{FILES}/{file_id}", headers=alice.headers)

    assert [f["id"] for f in listed["results"]] == [file_id] and listed["next"] is None
    assert result.ok and result.content.strip() == "The quarterly figures are final."
    assert deleted.status_code == 204
    assert api.get(f"{FILES}/{file_id}", headers=alice.headers).status_code == 404
    assert stored_keys() == []


@pytest.mark.django_db
def test_the_key_is_chosen_by_the_server_whatever_the_name(api, alice, backend):
    created = upload(api, alice, "../../../etc/passwd", b"root:x:0:0", "text/plain").json()

    [key] = stored_keys()
    assert key == f"{alice.tenant.company_id}/{created['id'].replace('-', '')}"
    assert created["name"] == "passwd"


@pytest.mark.django_db
def test_another_company_can_neither_see_nor_delete_a_file(api, alice, charlie, backend):
    file_id = upload(api, alice, "a.txt", b"acme only", "text/plain").json()["id"]

    assert api.get(FILES, headers=charlie.headers).json()["results"] == []
    assert api.get(f"{FILES}/{file_id}", headers=charlie.headers).status_code == 404
    assert api.delete(f"{FILES}/{file_id}", headers=charlie.headers).status_code == 404
    assert api.get(f"{FILES}/{file_id}", headers=alice.headers).status_code == 200
    assert len(stored_keys()) == 1


@pytest.mark.django_db
def test_past_the_company_quota_an_upload_is_refused_and_not_kept(api, alice, bob, charlie, knobs, backend):
    knobs(FILES_QUOTA_BYTES=10_000)
    first = upload(api, alice, "a.bin", b"a" * 6_000)
    refused = upload(api, bob, "b.bin", b"b" * 6_000)  # Bob is on Alice's team: one company's quota
    other = upload(api, charlie, "c.bin", b"c" * 6_000)

    assert (first.status_code, refused.status_code, other.status_code) == (201, 413, 201)
    error = refused.json()["error"]
    assert error["code"] == "storage_quota_exceeded"
    assert error["details"] == {"quota_bytes": 10_000, "used_bytes": 6_000, "file_bytes": 6_000}
    assert StoredFile.objects.filter(company_id=alice.tenant.company_id).count() == 1
    assert len(stored_keys()) == 2

    api.delete(f"{FILES}/{first.json()['id']}", headers=alice.headers)
    assert upload(api, bob, "b.bin", b"b" * 6_000).status_code == 201  # deleting made room


@pytest.mark.django_db
def test_the_content_type_is_what_the_bytes_are(api, alice, backend):
    pdf = upload(api, alice, "scan.png", make_pdf(["hello"]), "image/png").json()
    text = upload(api, alice, "notes.txt", b"plain words", "application/x-msdownload").json()

    assert pdf["content_type"] == "application/pdf"
    assert text["content_type"] == "text/plain"


@pytest.mark.django_db(transaction=True)
def test_old_uploads_and_those_past_the_count_are_pruned_with_their_bytes(api, alice, charlie, knobs, backend):
    knobs(FILES_RETENTION_DAYS=7.0, FILES_RETENTION_MAX=2)
    ids = [upload(api, alice, f"{i}.txt", f"file {i}".encode(), "text/plain").json()["id"] for i in range(4)]
    kept_by_charlie = upload(api, charlie, "c.txt", b"charlie's", "text/plain").json()["id"]
    StoredFile.objects.filter(pk=ids[0]).update(created_at=timezone.now() - timedelta(days=8))
    for i, file_id in enumerate(ids[1:], start=1):  # distinct ages, oldest first
        StoredFile.objects.filter(pk=file_id).update(created_at=timezone.now() - timedelta(minutes=10 - i))

    deleted = files_prune()

    assert deleted == 2  # the 8-day-old one, then the oldest beyond the newest two
    assert set(StoredFile.objects.values_list("id", flat=True).order_by()) == {
        *map(uuid.UUID, ids[2:]), uuid.UUID(kept_by_charlie)}
    assert len(stored_keys()) == 3


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
