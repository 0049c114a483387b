"""The knowledge base over the API: ingestion (text and files), listing, deletion,
relevance-ranked search, and the wall between companies."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from mageagent.errors import PayloadTooLarge
from tests.tools.documents import make_docx, make_pdf
from tools import services

pytestmark = pytest.mark.django_db
DOCS = "/mageagent/api/v1/knowledge/documents"
SEARCH = "/mageagent/api/v1/knowledge/search"


def add(api, persona, **body):
    response = api.post(DOCS, body, format="json", headers=persona.headers)
    assert response.status_code == 201, response.content
    return response.json()


def search(api, persona, query, limit=5):
    response = api.post(SEARCH, {"query": query, "limit": limit}, format="json", headers=persona.headers)
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_a_text_document_is_chunked_and_indexed(api, alice, knobs):
    knobs(KNOWLEDGE_CHUNK_CHARS=200)
    paragraphs = [f"Paragraph {i} talks about topic number {i} in some detail. " * 2 for i in range(6)]

    created = add(api, alice, title="Handbook", content="\n\n".join(paragraphs), metadata={"team": "ops"})

    assert created["title"] == "Handbook" and created["metadata"] == {"team": "ops"}
    assert created["chunks"] >= 3
    assert created["source"] == "text"


def test_search_ranks_the_most_relevant_passage_first(api, alice):
    add(api, alice, title="Refunds", content="Refunds are issued within 14 days. Refunds need a receipt.")
    add(api, alice, title="Shipping", content="Shipping takes 3 days. Express shipping is available.")
    add(api, alice, title="Misc", content="Our office has plants. Refunds are rare for plants.")

    results = search(api, alice, "when do refunds arrive?")

    assert [r["title"] for r in results[:2]] == ["Refunds", "Misc"]
    assert "Shipping" not in [r["title"] for r in results]
    assert results[0]["score"] > results[1]["score"] > 0
    assert set(results[0]) == {"document_id", "title", "content", "score"}


def test_stemming_finds_other_forms_of_a_word(api, alice):
    add(api, alice, title="Deploys", content="We deployed the service on Monday after deploying the database.")

    assert [r["title"] for r in search(api, alice, "deploys")] == ["Deploys"]
    assert [r["title"] for r in search(api, alice, "deploy")] == ["Deploys"]
    assert search(api, alice, "deplorable") == []


def test_a_query_without_words_finds_nothing(api, alice):
    add(api, alice, title="A", content="alpha beta")

    assert search(api, alice, "?!  ...") == []


def test_one_companys_documents_never_appear_in_anothers_search(api, alice, bob, charlie):
    add(api, alice, title="Acme secret", content="The launch code of the zeppelin is 4242.")

    assert search(api, charlie, "zeppelin launch code") == []
    assert [r["title"] for r in search(api, bob, "zeppelin launch code")] == ["Acme secret"]  # same company


def test_documents_are_listed_and_another_companys_are_not_found(api, alice, charlie):
    created = add(api, alice, title="Mine", content="some text")

    listed = api.get(DOCS, headers=alice.headers).json()
    foreign_get = api.get(f"{DOCS}/{created['id']}", headers=charlie.headers)
    foreign_delete = api.delete(f"{DOCS}/{created['id']}", headers=charlie.headers)

    assert [d["id"] for d in listed["results"]] == [created["id"]] and listed["next"] is None
    assert api.get(DOCS, headers=charlie.headers).json()["results"] == []
    assert foreign_get.status_code == foreign_delete.status_code == 404
    assert foreign_delete.json()["error"]["code"] == "not_found"
    assert api.get(f"{DOCS}/{created['id']}", headers=alice.headers).status_code == 200


def test_deleting_a_document_removes_it_from_search(api, alice):
    created = add(api, alice, title="Temporary", content="ephemeral walrus facts")
    assert search(api, alice, "walrus")

    response = api.delete(f"{DOCS}/{created['id']}", headers=alice.headers)

    assert response.status_code == 204
    assert search(api, alice, "walrus") == []
    assert api.delete(f"{DOCS}/{created['id']}", headers=alice.headers).status_code == 404


def test_a_malformed_document_id_is_not_found(api, alice):
    response = api.get(f"{DOCS}/not-a-uuid", headers=alice.headers)

    assert response.status_code == 404


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("notes.txt", b"Plain notes about the quokka census.", "quokka census"),
    ("page.html", b"<html><head><style>p{}</style><script>evil()</script></head>"
                  b"<body><p>HTML about the quokka census.</p></body></html>", "HTML about the quokka census."),
    ("report.pdf", make_pdf(["PDF about the quokka census."]), "PDF about the quokka census."),
    ("memo.docx", make_docx(["DOCX about the quokka census."]), "DOCX about the quokka census."),
])
def test_a_file_upload_is_extracted_and_searchable(api, alice, name, data, expected):
    upload = SimpleUploadedFile(name, data, content_type="application/octet-stream")

    response = api.post(DOCS, {"file": upload, "metadata": json.dumps({"kind": "upload"})}, format="multipart",
                        headers=alice.headers)

    assert response.status_code == 201, response.content
    assert response.json()["title"] == name and response.json()["source"] == "file"
    assert response.json()["metadata"] == {"kind": "upload", "filename": name}
    hits = search(api, alice, "quokka census")
    assert hits and expected in hits[0]["content"]
    assert "evil()" not in hits[0]["content"]


def test_bad_documents_are_refused_with_the_error_contract(api, alice):
    missing = api.post(DOCS, {"title": "no content"}, format="json", headers=alice.headers)
    unknown = api.post(DOCS, {"content": "x", "colour": "red"}, format="json", headers=alice.headers)
    empty = api.post(DOCS, {"content": "   \n\n  "}, format="json", headers=alice.headers)
    binary = api.post(DOCS, {"file": SimpleUploadedFile("x.bin", b"\x00\x01\x02" * 100)}, format="multipart",
                      headers=alice.headers)
    bad_search = api.post(SEARCH, {"query": "x", "limit": 0}, format="json", headers=alice.headers)

    for response in (missing, unknown, empty, binary, bad_search):
        assert response.status_code == 400, response.content
        assert response.json()["error"]["code"] == "validation_error"
    assert "colour" in unknown.json()["error"]["details"]
    assert "unsupported file type" in binary.json()["error"]["message"]


def test_a_document_over_the_size_limit_is_refused_with_413(api, alice, knobs):
    knobs(KNOWLEDGE_MAX_BYTES=2048)

    as_json = api.post(DOCS, {"content": "y" * 5000}, format="json", headers=alice.headers)
    just_over = api.post(DOCS, {"content": "y" * 2049}, format="json", headers=alice.headers)
    as_file = api.post(DOCS, {"file": SimpleUploadedFile("big.txt", b"z" * 200_000)}, format="multipart",
                       headers=alice.headers)

    for response in (as_json, just_over, as_file):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


def test_the_knowledge_api_needs_an_api_key(api):
    assert api.get(DOCS).status_code == 401
    assert api.post(SEARCH, {"query": "x"}, format="json").status_code == 401


def test_the_text_size_limit_is_the_services_whatever_calls_it(alice, knobs):
    knobs(KNOWLEDGE_MAX_BYTES=2048)

    with pytest.raises(PayloadTooLarge):
        services.document_create_from_text(company_id=alice.tenant.company_id, title="", content="é" * 1025)
    kept = services.document_create_from_text(company_id=alice.tenant.company_id, title="", content="é" * 1024)
    assert kept.chars == 1024
