"""/v1 answers errors in OpenAI's shape, also those refused before any view runs."""

from __future__ import annotations

import orjson
import pytest

from mageagent.handlers import max_request_bytes
from tests.mageagent.test_handlers import request

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_body_over_the_limit_on_v1_is_a_413_in_openais_shape():
    limit = max_request_bytes("/v1/chat/completions")
    sent, _ = request("/v1/chat/completions", [(b"content-length", str(limit + 1).encode())], [b""])

    assert sent[0]["status"] == 413
    error = orjson.loads(sent[1]["body"])["error"]
    assert error["code"] == "payload_too_large" and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_an_unknown_key_on_v1_is_a_401_in_openais_shape(api):
    response = api.get("/v1/models", HTTP_AUTHORIZATION="Bearer wrong")

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_a_malformed_chat_request_names_the_parameter(api, alice):
    response = api.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [], "logit_bias": {}},
                        format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "validation_error" and error["param"]
