"""Uploads (POST /files) and the file_processing tool: extraction, OCR, summaries, and
the wall between companies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections

from providers.llm import close_sessions
from tasks.runtime.completion import routed_complete
from tests.clients import sim
from tests.tools.conftest import filesystem_storage
from tests.tools.documents import make_docx, make_pdf, make_text_image
from tools import netfetch
from tools.extract import ocr_unavailable_reason
from tools.registry import ToolContext, ToolResult, tool_invoke

FILES = "/mageagent/api/v1/files"
needs_tesseract = pytest.mark.skipif(ocr_unavailable_reason() is not None, reason="tesseract is not installed")


@pytest.fixture(autouse=True)
def files_dir(files_storage, tmp_path):
    files_storage(filesystem_storage(str(tmp_path / "files")))
    return tmp_path / "files"


def upload(api, persona, name: str, data: bytes, content_type: str = "application/octet-stream") -> dict:
    response = api.post(FILES, {"file": SimpleUploadedFile(name, data, content_type=content_type)},
                        format="multipart", headers=persona.headers)
    assert response.status_code == 201, response.content
    return response.json()


def in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    def closing(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()
    return sync_to_async(closing, thread_sensitive=False)


async def process(persona, **arguments) -> ToolResult:
    company = persona.tenant.company_id
    return await tool_invoke("file_processing", json.dumps(arguments),
                             ToolContext("t", company, complete=routed_complete(company)))


@pytest.mark.django_db
def test_an_upload_is_stored_for_the_company(api, alice, files_dir):
    stored = upload(api, alice, "../../etc/notes.txt", b"hello files", "text/plain")

    assert stored["name"] == "notes.txt" and stored["size"] == 11 and stored["content_type"] == "text/plain"
    on_disk = list(files_dir.rglob("*"))
    assert [p.read_bytes() for p in on_disk if p.is_file()] == [b"hello files"]
    assert all(str(p).startswith(str(files_dir)) for p in on_disk)


@pytest.mark.django_db
def test_an_upload_over_the_limit_is_refused_with_413_and_not_kept(api, alice, knobs, files_dir):
    knobs(FILES_MAX_BYTES=4096)

    streamed = api.post(FILES, {"file": SimpleUploadedFile("a.bin", b"a" * 5000)}, format="multipart",
                        headers=alice.headers)
    declared = api.post(FILES, {"file": SimpleUploadedFile("b.bin", b"b" * 300_000)}, format="multipart",
                        headers=alice.headers)

    for response in (streamed, declared):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
    assert not [p for p in files_dir.rglob("*") if p.is_file()]


@pytest.mark.django_db
def test_an_upload_needs_a_file_and_a_key(api, alice):
    missing = api.post(FILES, {"name": "x"}, format="multipart", headers=alice.headers)

    assert missing.status_code == 400 and missing.json()["error"]["code"] == "validation_error"
    assert api.post(FILES, {"file": SimpleUploadedFile("a.txt", b"a")}, format="multipart").status_code == 401


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("name", "data", "expected"), [
    ("a.txt", "Plain words, café.".encode(), "Plain words, café."),
    ("b.html", b"<html><body><script>steal()</script><h1>Title</h1><p>Body text.</p></body></html>",
     "Title\n\nBody text."),
    ("c.pdf", make_pdf(["First line of the PDF", "Second line"]), "First line of the PDF\nSecond line"),
    ("d.docx", make_docx(["Docx paragraph one", "Docx paragraph two"]), "Docx paragraph one\nDocx paragraph two"),
])
async def test_extract_text_reads_uploaded_documents(api, alice, name, data, expected):
    stored = await in_thread(upload)(api, alice, name, data)

    result = await process(alice, operation="extract_text", file_id=stored["id"])

    assert result.ok, result.content
    assert result.content.strip() == expected


@pytest.mark.django_db(transaction=True)
async def test_another_companys_file_is_not_found_through_the_tool(api, alice, charlie):
    stored = await in_thread(upload)(api, alice, "secret.txt", b"acme secret")

    foreign = await process(charlie, operation="extract_text", file_id=stored["id"])
    bogus = await process(alice, operation="extract_text", file_id="../../etc/passwd")

    assert (foreign.ok, foreign.content) == (False, f"error: file {stored['id']} not found")
    assert not bogus.ok and "not found" in bogus.content


@pytest.mark.django_db(transaction=True)
async def test_the_arguments_name_exactly_one_file(alice):
    neither = await process(alice, operation="extract_text")
    both = await process(alice, operation="ocr", file_id="x", file_url="https://example.com/a.png")

    assert not neither.ok and "exactly one of file_id or file_url" in neither.content
    assert not both.ok and "exactly one of file_id or file_url" in both.content


@needs_tesseract
@pytest.mark.django_db(transaction=True)
async def test_ocr_reads_text_from_an_image_and_a_scanned_pdf(api, alice):
    image = await in_thread(upload)(api, alice, "scan.png", make_text_image("INVOICE 4711"), "image/png")
    scanned = await in_thread(upload)(api, alice, "scan.pdf", make_text_image("PAID IN FULL", fmt="PDF"))

    from_image = await process(alice, operation="ocr", file_id=image["id"])
    from_pdf = await process(alice, operation="ocr", file_id=scanned["id"])
    as_text = await process(alice, operation="extract_text", file_id=image["id"])

    assert from_image.ok and "INVOICE 4711" in from_image.content
    assert from_pdf.ok and "PAID IN FULL" in from_pdf.content
    assert not as_text.ok and "use the ocr operation" in as_text.content


@pytest.mark.django_db(transaction=True)
async def test_ocr_without_tesseract_says_how_to_install_it(api, alice, knobs):
    knobs(TESSERACT="/nonexistent/tesseract")
    image = await in_thread(upload)(api, alice, "scan.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png")

    result = await process(alice, operation="ocr", file_id=image["id"])

    assert not result.ok
    assert "tesseract is not installed (apt-get install tesseract-ocr)" in result.content


@pytest.mark.django_db(transaction=True)
async def test_summarize_asks_the_routed_model(api, alice, knobs, simulator):
    knobs(LLM_API_BASE=f"{simulator}/v1")
    key = "summarize-test"
    text = f"Minutes of the board meeting. The budget was approved. {sim(text='Board approved the budget.', key=key)}"
    stored = await in_thread(upload)(api, alice, "minutes.txt", text.encode(), "text/plain")

    result = await process(alice, operation="summarize", file_id=stored["id"])

    assert (result.ok, result.content) == (True, "Board approved the budget.")
    records = httpx.get(f"{simulator}/_sim/requests/{key}").json()
    assert len(records) == 1 and records[0]["status"] == "completed"
    await close_sessions()  # this test's loop ends here; a worker's loop keeps its session


@pytest.mark.django_db(transaction=True)
async def test_a_file_url_on_an_allowlisted_host_is_fetched_and_read(alice, knobs, fake_services, monkeypatch):
    async def resolve(host: str, port: int) -> list[str]:
        assert host == "docs.internal"
        return ["127.0.0.1"]

    monkeypatch.setattr(netfetch, "_resolve", resolve)
    knobs(FETCH_ALLOWED_HOSTS=["docs.internal"])

    result = await process(alice, operation="extract_text", file_url=f"http://docs.internal:{fake_services.port}"
                                                                     "/page.html")

    assert result.ok, result.content
    assert result.content == "Fake page\n\nQuarterly report\n\nRevenue grew by 12 percent."
