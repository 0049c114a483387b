"""The webhook endpoints: registration behind the SSRF guard, one app's hooks invisible to
every other app, secret rotation."""

from __future__ import annotations

import pytest

from tests.webhooks.receiver import Receiver

API = "/mageagent/api/v1"

pytestmark = pytest.mark.django_db


def create(api, persona, url: str, **body):
    return api.post(f"{API}/webhooks", {"url": url, **body}, format="json", headers=persona.headers)


def test_alice_registers_a_webhook_and_sees_its_secret_only_once(api, alice, receiver: Receiver, local_hooks):
    created = create(api, alice, receiver.url("/a"), events=["task.completed", "task.failed"])

    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["url"] == receiver.url("/a") and body["events"] == ["task.completed", "task.failed"]
    assert body["secret"].startswith("whsec_")
    listed = api.get(f"{API}/webhooks", headers=alice.headers).json()
    assert [h["id"] for h in listed["results"]] == [body["id"]] and listed["next"] is None
    assert "secret" not in listed["results"][0]
    assert "secret" not in api.get(f"{API}/webhooks/{body['id']}", headers=alice.headers).json()


def test_events_default_to_every_task_event(api, alice, receiver: Receiver, local_hooks):
    body = create(api, alice, receiver.url("/all")).json()

    assert body["events"] == ["task.completed", "task.failed", "task.cancelled"]


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.1.2.3/hook",
                                 "http://127.0.0.1:9/hook", "http://[::1]/hook"])
def test_a_webhook_to_an_internal_address_is_refused(api, alice, url):
    refused = create(api, alice, url)

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "validation_error"
    assert "refused" in refused.json()["error"]["message"]


def test_an_allowed_internal_host_is_accepted_but_the_metadata_address_still_is_not(api, alice, local_hooks):
    assert create(api, alice, "http://127.0.0.1:9/hook").status_code == 201
    assert create(api, alice, "http://169.254.169.254/hook").status_code == 400


@pytest.mark.parametrize("body", [{"url": "not a url"}, {"url": "ftp://example.com/x"},
                                  {"url": "http://127.0.0.1/x", "events": ["task.started"]},
                                  {"url": "http://127.0.0.1/x", "events": []},
                                  {"url": "http://127.0.0.1/x", "secret": "mine"}])
def test_a_malformed_registration_is_a_400(api, alice, local_hooks, body):
    refused = api.post(f"{API}/webhooks", body, format="json", headers=alice.headers)

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "validation_error"


def test_another_app_can_neither_see_nor_touch_alices_webhook(api, alice, bob, charlie, receiver, local_hooks):
    hook = create(api, alice, receiver.url("/mine")).json()

    for other in (bob, charlie):
        assert api.get(f"{API}/webhooks", headers=other.headers).json()["results"] == []
        for method, path in (("get", ""), ("delete", ""), ("post", "/rotate-secret"), ("get", "/deliveries")):
            answer = getattr(api, method)(f"{API}/webhooks/{hook['id']}{path}", headers=other.headers)
            assert answer.status_code == 404, (other.name, method, path)
            assert answer.json()["error"]["code"] == "not_found"
    assert api.get(f"{API}/webhooks/{hook['id']}", headers=alice.headers).status_code == 200


def test_alice_deletes_her_webhook(api, alice, receiver, local_hooks):
    hook = create(api, alice, receiver.url("/gone")).json()

    assert api.delete(f"{API}/webhooks/{hook['id']}", headers=alice.headers).status_code == 204
    assert api.get(f"{API}/webhooks/{hook['id']}", headers=alice.headers).status_code == 404
    assert api.get(f"{API}/webhooks/not-a-uuid", headers=alice.headers).status_code == 404


def test_rotating_the_secret_shows_a_new_one(api, alice, receiver, local_hooks):
    hook = create(api, alice, receiver.url("/rot")).json()

    rotated = api.post(f"{API}/webhooks/{hook['id']}/rotate-secret", headers=alice.headers)

    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != hook["secret"]
