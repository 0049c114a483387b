"""Hostile input gets a 4xx in the contract's error shape, never a 500 or an HTML page.

The body and header limits live in daphne's HTTP protocol (mageagent/bodylimit.py), so
those cases are sent over a raw socket to the e2e stack's daphne; the others go through
Django's test client with DEBUG on (the development default)."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import httpx
import pytest
from django.test import override_settings
from websockets.sync.client import connect

from mageagent.handlers import max_request_bytes
from mageagent.parsers import MAX_JSON_DEPTH
from tasks.events import MAX_POSITION
from tests.clients import API, Client, sim
from tests.mageagent.test_api_errors import assert_contract_error

pytestmark = pytest.mark.django_db
BEYOND = str(2**64)  # past a Redis stream id's range: Redis answered "Invalid stream ID"


def post_task(client: Any, persona: Any, body: bytes | str, **extra: Any) -> Any:
    return client.post(f"{API}/tasks", data=body, content_type=extra.pop("content_type", "application/json"),
                       HTTP_AUTHORIZATION=f"Bearer {persona.key}", **extra)


# --- resume positions ---------------------------------------------------------------------

@override_settings(DEBUG=True)
@pytest.mark.parametrize("after", [BEYOND, str(MAX_POSITION + 1), "-1"])
def test_events_after_a_position_out_of_range_is_a_400(client, alice, after):
    response = client.get(f"{API}/tasks/{uuid.uuid4()}/events", {"after": after},
                          HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert_contract_error(response, 400, "validation_error")


@override_settings(DEBUG=True)
def test_events_after_the_largest_position_is_an_empty_page(client, alice):
    task = post_task(client, alice, json.dumps({"prompt": f"x {sim(tokens=1)}"})).json()

    response = client.get(f"{API}/tasks/{task['id']}/events", {"after": str(MAX_POSITION)},
                          HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 200 and response.json()["events"] == []


@override_settings(DEBUG=True)
@pytest.mark.django_db(transaction=True)  # the stream looks the key up on a thread of its own
def test_sse_with_a_last_event_id_out_of_range_is_a_400_before_the_stream_opens(client, alice):
    response = client.get(f"{API}/tasks/{uuid.uuid4()}/stream", HTTP_AUTHORIZATION=f"Bearer {alice.key}",
                          HTTP_LAST_EVENT_ID=BEYOND)

    assert_contract_error(response, 400, "validation_error")
    assert str(MAX_POSITION) in response.json()["error"]["message"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_websocket_after_out_of_range_is_closed_4400_with_an_error_frame(stack, alice):
    task = Client(stack.web_url, alice.key).create(f"x {sim(tokens=1)}")
    url = Client(stack.web_url, alice.key).ws_url(f"{API}/tasks/{task['id']}/ws?token={alice.key}&after={BEYOND}")

    with connect(url, open_timeout=10) as ws:
        frame = json.loads(ws.recv(timeout=10))
        with pytest.raises(Exception, match="4400"):
            ws.recv(timeout=10)

    assert frame["type"] == "error" and frame["error"]["code"] == "validation_error"
    assert ws.close_code == 4400


# --- bodies the database or the encoder refused --------------------------------------------

@override_settings(DEBUG=True)
@pytest.mark.parametrize("metadata", [
    '{"note": "a\\u0000b"}',
    '{"a\\u0000": 1}',
    '{"deep": [{"x": "\\u0000"}]}',
])
def test_metadata_holding_a_nul_is_a_400(client, alice, metadata):
    response = post_task(client, alice, f'{{"prompt": "hi", "metadata": {metadata}}}')

    assert_contract_error(response, 400, "validation_error")
    assert "NUL" in response.json()["error"]["message"]


@override_settings(DEBUG=True)
def test_a_literal_backslash_u0000_text_is_accepted(client, alice):
    response = post_task(client, alice, json.dumps({"prompt": f"hi {sim(tokens=1)}",
                                                    "metadata": {"regex": "\\u0000"}}))

    assert response.status_code == 202
    assert response.json()["metadata"] == {"regex": "\\u0000"}


@override_settings(DEBUG=True)
@pytest.mark.parametrize("text", ["\\ud800", "\\udfff", "x\\ud800y", "\\udc00\\ud800"])
def test_metadata_holding_a_lone_surrogate_is_a_400(client, alice, text):
    response = post_task(client, alice, f'{{"prompt": "hi", "metadata": {{"t": "{text}"}}}}')

    assert_contract_error(response, 400, "validation_error")


@override_settings(DEBUG=True)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 500, 50_000])
def test_metadata_nested_too_deep_is_a_400_that_names_the_limit(client, alice, depth):
    nested = "[" * depth + "]" * depth
    response = post_task(client, alice, f'{{"prompt": "hi", "metadata": {{"a": {nested}}}}}')

    assert_contract_error(response, 400, "validation_error")
    assert f"deeper than {MAX_JSON_DEPTH} levels" in response.json()["error"]["message"]


@override_settings(DEBUG=True)
def test_metadata_nested_within_the_limit_is_accepted(client, alice):
    nested: list[Any] = []
    for _ in range(MAX_JSON_DEPTH - 3):  # the body and metadata objects count, and the innermost list
        nested = [nested]
    response = post_task(client, alice, json.dumps({"prompt": f"hi {sim(tokens=1)}", "metadata": {"a": nested}}))

    assert response.status_code == 202, response.content


@override_settings(DEBUG=True)
def test_an_idempotency_key_over_200_characters_is_a_400(client, alice):
    response = post_task(client, alice, json.dumps({"prompt": "hi"}), HTTP_IDEMPOTENCY_KEY="k" * 201)

    assert_contract_error(response, 400, "validation_error")
    assert response.json()["error"]["details"] == {"max_length": 200}


@override_settings(DEBUG=True)
def test_an_idempotency_key_of_200_characters_is_accepted(client, alice):
    response = post_task(client, alice, json.dumps({"prompt": f"hi {sim(tokens=1)}"}),
                         HTTP_IDEMPOTENCY_KEY="k" * 200)

    assert response.status_code == 202


@override_settings(DEBUG=True)
def test_a_multipart_task_is_refused_with_415(client, alice):
    response = client.post(f"{API}/tasks", {"prompt": "hi", "context": "[]", "metadata": '{"a": 1}'},
                           HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert_contract_error(response, 415, "unsupported_media_type")


@override_settings(DEBUG=True)
def test_a_knowledge_document_is_still_uploaded_as_multipart(client, alice):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post(f"{API}/knowledge/documents",
                           {"file": SimpleUploadedFile("notes.txt", b"hello knowledge", "text/plain")},
                           HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 201, response.content


@override_settings(DEBUG=True, ALLOWED_HOSTS=["127.0.0.1"])
@pytest.mark.parametrize("path", [f"{API}/tasks", "/healthz", f"{API}/nope"])
def test_a_host_not_allowed_is_a_json_400_with_debug_on(client, alice, path):
    response = client.get(path, HTTP_HOST="evil.example", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert_contract_error(response, 400, "bad_request")


@override_settings(DEBUG=False, ALLOWED_HOSTS=["127.0.0.1"])
def test_a_host_not_allowed_is_a_json_400_with_debug_off(client, alice):
    response = client.get(f"{API}/tasks", HTTP_HOST="evil.example", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert_contract_error(response, 400, "bad_request")


# --- the HTTP protocol: raw requests to daphne ---------------------------------------------

def raw_exchange(url: str, head: bytes, body: bytes = b"", *, read_timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send a request as bytes, read the answer until the server closes or it is complete."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(head)
        if body:
            try:
                sock.sendall(body)
            except OSError:
                pass  # the server answered and closed before reading it all
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    headers_raw, _, payload = rest.partition(b"\r\n\r\n")
    headers = dict(line.decode().lower().split(": ", 1) for line in headers_raw.split(b"\r\n") if b": " in line)
    return int(status_line.split()[1]), headers, payload


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 62


def post_head(persona: Any, extra: str, path: str = f"{API}/tasks") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {persona.key}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def assert_json_error(payload: bytes, code: str) -> dict:
    body = json.loads(payload)
    assert set(body["error"]) == {"code", "message", "details"} and body["error"]["code"] == code
    return body


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_declared_length_over_the_limit_with_no_body_is_answered_413_at_once(stack, alice):
    status, headers, payload = raw_exchange(stack.web_url, post_head(alice, "Content-Length: 999999999999\r\n"))

    assert status == 413 and headers["content-type"] == "application/json"
    assert assert_json_error(payload, "payload_too_large")["error"]["details"]["max_bytes"] >= max_request_bytes()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_declared_length_over_the_limit_gets_no_100_continue(stack, alice):
    status, _, payload = raw_exchange(stack.web_url, post_head(
        alice, f"Content-Length: {max_request_bytes() + 1}\r\nExpect: 100-continue\r\n"))

    assert status == 413
    assert_json_error(payload, "payload_too_large")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_cut_off_at_the_limit(stack, alice):
    piece = b"a" * 1_000_000
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    head = post_head(alice, "Transfer-Encoding: chunked\r\n")
    # Twice the limit in chunks, and no last chunk: only the cut-off can answer.
    count = 2 * max(max_request_bytes(), max_request_bytes(f"{API}/tasks")) // len(piece)

    status, _, payload = raw_exchange(stack.web_url, head, chunk * count)

    assert status == 413
    assert_json_error(payload, "payload_too_large")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_chunked_task_within_the_limit_is_read_like_any_other(stack, alice):
    body = json.dumps({"prompt": f"chunked {sim(tokens=1)}"}).encode()
    head = post_head(alice, "Transfer-Encoding: chunked\r\n")

    status, _, payload = raw_exchange(stack.web_url, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    assert status == 202 and json.loads(payload)["prompt"].startswith("chunked")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_chunked_task_over_its_path_limit_is_a_413(stack, alice):
    body = json.dumps({"prompt": "a" * max_request_bytes(f"{API}/tasks")}).encode()
    head = post_head(alice, "Transfer-Encoding: chunked\r\n")

    status, _, payload = raw_exchange(stack.web_url, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    assert status == 413
    assert_json_error(payload, "payload_too_large")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("shape", ["one long header", "many headers", "a long path"])
def test_oversized_headers_get_a_431_in_the_error_shape(stack, alice, shape):
    if shape == "one long header":
        head = f"GET {API}/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 20_000}\r\n\r\n"
    elif shape == "many headers":
        many = "".join(f"X-H{i}: {'a' * 1000}\r\n" for i in range(30))
        head = f"GET {API}/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n"
    else:
        head = f"GET {API}/tasks?x={'a' * 20_000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    status, _, payload = raw_exchange(stack.web_url, head.encode())

    assert status == 431
    assert_json_error(payload, "headers_too_large")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_host_not_allowed_is_a_json_400_from_daphne(stack, alice):
    response = httpx.get(f"{stack.web_url}{API}/tasks", headers={**alice.headers, "Host": "evil.example"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_web_still_serves_after_refusing(stack, alice):
    raw_exchange(stack.web_url, post_head(alice, "Content-Length: 999999999999\r\n"))

    response = httpx.get(f"{stack.web_url}/healthz")

    assert response.status_code == 200
