"""Every response under the API prefix is the contract's JSON error, with DEBUG on too
(the development default, used by run.sh and the e2e stack)."""

from __future__ import annotations

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db(transaction=True)
API = "/mageagent/api/v1"


def assert_contract_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code


@override_settings(DEBUG=True)
@pytest.mark.parametrize("path", [f"{API}/tasks/", f"{API}/nope", f"{API}/tasks/x/y/z", API])
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_an_unknown_api_path_is_a_json_404_even_with_debug_on(client, alice, path, method):
    response = getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert_contract_error(response, 404, "not_found")


@override_settings(DEBUG=True)
def test_the_stream_answers_a_wrong_method_with_a_json_405(client, alice):
    response = client.post(f"{API}/tasks/00000000-0000-0000-0000-000000000000/stream",
                           HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert_contract_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET, HEAD"


@override_settings(DEBUG=True)
def test_an_unexpected_error_opening_the_stream_is_a_json_500(client, alice, monkeypatch):
    from tasks import selectors

    def broken(**_: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(selectors, "task_get", broken)

    response = client.get(f"{API}/tasks/00000000-0000-0000-0000-000000000000/stream",
                          HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert_contract_error(response, 500, "internal_error")
