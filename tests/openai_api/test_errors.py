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


@pytest.mark.parametrize("field", [{"top_p": False}, {"temperature": "1"}, {"stream": 0}, {"max_tokens": 10**10},
                                   {"tool_choice": []}, {"stream_options": {"include_usage": 1}}])
def test_a_chat_parameter_of_another_json_type_or_past_its_limit_is_a_400_naming_it(api, alice, field):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **field}
    response = api.post("/v1/chat/completions", body, format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith(next(iter(field)))


@pytest.mark.parametrize("value", [None, "", "  ", [], ["text"]])
def test_a_response_input_that_is_not_text_or_items_is_a_400(api, alice, value):
    response = api.post("/v1/responses", {"model": "gpt-4o-mini", "input": value}, format="json",
                        HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
