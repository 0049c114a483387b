"""Who may follow a task's stream: its company's keys (header or ?token=) and staff sessions."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect

from tests.clients import API, Client, answer_from_chunks, sim, tokens

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def ws_frames(url: str, **kwargs) -> tuple[list[dict], int | None]:
    frames = []
    with connect(url, open_timeout=10, **kwargs) as ws:
        try:
            while True:
                frames.append(json.loads(ws.recv(timeout=30)))
        except Exception as exc:
            if "ConnectionClosed" not in exc.__class__.__name__:
                raise
        return frames, ws.close_code


def test_a_websocket_without_a_key_gets_an_error_frame_and_is_closed(stack):
    client = Client(stack.web_url, None)

    frames, code = ws_frames(client.ws_url("/mageagent/ws"))

    assert code == 4401
    assert frames == [{"type": "error", "taskId": None, "error": {"code": "authentication_failed",
                                                  "message": "an API key is required", "details": {}}}]


def test_another_companys_task_websocket_is_not_found(stack, alice, charlie):
    task = Client(stack.web_url, alice.key).create(f"private {sim(tokens=2)}")

    frames, code = ws_frames(Client(stack.web_url, charlie.key).ws_url(
        f"{API}/tasks/{task['id']}/ws?token={charlie.key}"))

    assert code == 4404
    assert frames[0]["type"] == "error" and frames[0]["error"]["code"] == "not_found"


def test_the_sse_stream_refuses_a_missing_or_wrong_key(stack, alice):
    task = Client(stack.web_url, alice.key).create(f"x {sim(tokens=1)}")

    missing = httpx.get(f"{stack.web_url}{API}/tasks/{task['id']}/stream")
    wrong = httpx.get(f"{stack.web_url}{API}/tasks/{task['id']}/stream", params={"token": "mk_wrong"})

    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == "authentication_failed"


def test_a_bad_resume_position_is_a_400(stack, alice):
    task = Client(stack.web_url, alice.key).create(f"x {sim(tokens=1)}")

    response = httpx.get(f"{stack.web_url}{API}/tasks/{task['id']}/stream",
                         headers={"Authorization": f"Bearer {alice.key}", "Last-Event-ID": "banana"})

    assert response.status_code == 400 and response.json()["error"]["code"] == "validation_error"


def test_staff_signed_in_to_the_admin_may_follow_any_tasks_stream(stack, alice, django_user_model):
    from tests.clients import parse_sse

    task = Client(stack.web_url, alice.key).create(f"watched {sim(tokens=5)}")
    django_user_model.objects.create_user("ops", password="pw-ops-123", is_staff=True)
    with httpx.Client(base_url=stack.web_url, timeout=30) as browser:
        login = browser.get("/admin/login/")
        browser.post("/admin/login/", data={"username": "ops", "password": "pw-ops-123", "next": "/admin/",
                                            "csrfmiddlewaretoken": login.cookies["csrftoken"]})
        assert "sessionid" in browser.cookies
        with browser.stream("GET", f"{API}/tasks/{task['id']}/stream") as response:
            assert response.status_code == 200
            events = [e.data for e in parse_sse(response.iter_lines()) if not isinstance(e, str)]

    assert answer_from_chunks(events) == tokens(5)


def test_a_key_passed_as_a_query_token_stays_out_of_the_access_log(stack, alice):
    task = Client(stack.web_url, alice.key).create(f"logged {sim(tokens=1)}")

    response = httpx.get(f"{stack.web_url}{API}/tasks/{task['id']}/events", params={"token": alice.key})
    httpx.get(f"{stack.web_url}/healthz")  # a later entry: the one before it has been written

    assert response.status_code == 401  # ?token= is for streams only
    stack.wait_until(lambda: "/healthz" in stack.processes["web"].output(), "the access log")
    log = stack.processes["web"].output()
    assert f"/tasks/{task['id']}/events?token=[redacted]" in log
    assert alice.key not in log
