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


def test_the_sse_stream_accepts_the_x_api_key_header(stack, alice):
    from tests.clients import parse_sse

    task = Client(stack.web_url, alice.key).create(f"x-api-key {sim(tokens=3)}")

    with httpx.stream("GET", f"{stack.web_url}{API}/tasks/{task['id']}/stream",
                      headers={"X-API-Key": alice.key}, timeout=30) as response:
        assert response.status_code == 200
        events = [e.data for e in parse_sse(response.iter_lines()) if not isinstance(e, str)]

    assert events[-1]["type"] == "done" and answer_from_chunks(events) == tokens(3)


def test_a_bad_resume_position_on_the_task_websocket_is_an_error_frame(stack, alice):
    task = Client(stack.web_url, alice.key).create(f"x {sim(tokens=1)}")

    for after in ("banana", "-1"):
        frames, code = ws_frames(Client(stack.web_url, alice.key).ws_url(
            f"{API}/tasks/{task['id']}/ws?after={after}&token={alice.key}"))

        assert code == 4400
        assert [f["type"] for f in frames] == ["error"] and frames[0]["error"]["code"] == "validation_error"


def test_a_malformed_task_id_on_the_task_websocket_is_not_found(stack, alice):
    frames, code = ws_frames(Client(stack.web_url, alice.key).ws_url(f"{API}/tasks/not-a-uuid/ws?token={alice.key}"))

    assert code == 4404
    assert frames == [{"type": "error", "error": {"code": "not_found", "message": "task not found", "details": {}}}]


def test_subscribing_to_another_companys_task_on_the_multiplexed_websocket_is_an_error_frame(stack, alice, charlie):
    task = Client(stack.web_url, alice.key).create(f"private {sim(tokens=2)}")

    with connect(Client(stack.web_url, charlie.key).ws_url(f"/mageagent/ws?token={charlie.key}"),
                 open_timeout=10) as ws:
        ws.send(json.dumps({"type": "subscribe-task", "taskId": task["id"], "after": 0}))
        frame = json.loads(ws.recv(timeout=30))
        ws.send(json.dumps({"type": "cancel-task", "taskId": task["id"]}))
        cancel = json.loads(ws.recv(timeout=30))

    assert frame["type"] == "error" and frame["taskId"] == task["id"]
    assert frame["error"]["code"] == "not_found"
    assert cancel["type"] == "error" and cancel["error"]["code"] == "not_found"
    assert Client(stack.web_url, alice.key).get(task["id"])["status"] != "cancelled"


def staff_session(stack, django_user_model) -> str:
    django_user_model.objects.create_user("ops-ws", password="pw-ops-123", is_staff=True)
    with httpx.Client(base_url=stack.web_url, timeout=30) as browser:
        login = browser.get("/admin/login/")
        browser.post("/admin/login/", data={"username": "ops-ws", "password": "pw-ops-123", "next": "/admin/",
                                            "csrfmiddlewaretoken": login.cookies["csrftoken"]})
        return browser.cookies["sessionid"]


def test_a_staff_session_is_refused_on_a_websocket_opened_by_a_foreign_page(stack, alice, django_user_model):
    task = Client(stack.web_url, alice.key).create(f"watched {sim(tokens=3)}")
    cookie = {"Cookie": f"sessionid={staff_session(stack, django_user_model)}"}
    url = Client(stack.web_url, None).ws_url(f"{API}/tasks/{task['id']}/ws")

    foreign, foreign_code = ws_frames(url, additional_headers=cookie, origin="https://evil.example")
    ours, _ = ws_frames(url, additional_headers=cookie, origin=stack.web_url)

    assert foreign_code == 4401
    assert [f["error"]["code"] for f in foreign] == ["authentication_failed"]
    assert ours[-1]["type"] == "done" and answer_from_chunks(ours) == tokens(3)


def test_an_api_key_works_on_a_websocket_from_any_origin(stack, alice):
    task = Client(stack.web_url, alice.key).create(f"embedded {sim(tokens=2)}")

    frames, code = ws_frames(Client(stack.web_url, alice.key).ws_url(f"{API}/tasks/{task['id']}/ws?token={alice.key}"),
                             origin="https://partner.example")

    assert code == 1000 and frames[-1]["type"] == "done"


def test_unknown_api_paths_are_json_404s_on_the_debug_stack(stack, alice):
    for path in (f"{API}/tasks/", f"{API}/nope"):
        response = httpx.get(f"{stack.web_url}{path}", headers={"Authorization": f"Bearer {alice.key}"})

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_opening_a_stream_past_the_apps_rate_limit_is_refused_on_sse_and_websocket(stack, alice, bob):
    from mageagent.ratelimit import _keys
    from mageagent.tenancy.models import App
    from tasks import events

    task = Client(stack.web_url, alice.key).create(f"x {sim(tokens=1)}")
    bobs = Client(stack.web_url, bob.key).create(f"y {sim(tokens=1)}")
    App.objects.filter(pk=alice.tenant.app_id).update(requests_per_minute=6)  # one at once, the next in 10 s
    events.sync_client().delete(*_keys(f"app:{alice.tenant.app_id}"))

    opened = httpx.get(f"{stack.web_url}{API}/tasks/{task['id']}/stream", headers={"X-API-Key": alice.key},
                       timeout=30)  # the one request the bucket holds: the whole stream, to its `done`
    refused = httpx.get(f"{stack.web_url}{API}/tasks/{task['id']}/stream", headers={"X-API-Key": alice.key},
                        timeout=30)
    frames, code = ws_frames(Client(stack.web_url, alice.key).ws_url(f"{API}/tasks/{task['id']}/ws?token={alice.key}"))
    bob_frames, bob_code = ws_frames(
        Client(stack.web_url, bob.key).ws_url(f"{API}/tasks/{bobs['id']}/ws?token={bob.key}"))

    assert opened.status_code == 200 and '"type":"done"' in opened.text
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 11
    assert code == 4429 and [f["error"]["code"] for f in frames] == ["rate_limited"]
    assert bob_code == 1000 and bob_frames[-1]["type"] == "done"  # acme's other app has no limit
