from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_it_rejects_a_request_without_an_api_key(api):
    response = api.get("/mageagent/api/v1/tasks")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_it_rejects_a_wrong_api_key(api, alice):
    response = api.get("/mageagent/api/v1/tasks", HTTP_AUTHORIZATION="Bearer mk_nope")
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_it_accepts_the_x_api_key_header(api, alice):
    response = api.get("/mageagent/api/v1/tasks", HTTP_X_API_KEY=alice.key)
    assert response.status_code == 200
    assert response.json() == {"results": [], "next": None}
