"""Deliveries in-process against a real HTTP endpoint: what a task's end sends, signed as
the Standard Webhooks reference library verifies, retried with the same id, and an
endpoint failing for too long disabled."""

from __future__ import annotations

import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from tasks import services as task_services
from tasks.models import Task
from tests.webhooks.receiver import Receiver
from webhooks import services
from webhooks.models import Delivery

API = "/mageagent/api/v1"

pytestmark = pytest.mark.django_db


@pytest.fixture
def quick_retries(settings) -> None:
    settings.MAGEAGENT = {**settings.MAGEAGENT, "WEBHOOK_RETRY_SCHEDULE_S": [0.0, 0.0]}


def hook(api, persona, url: str, events: list[str] | None = None) -> dict:
    body = {"url": url} if events is None else {"url": url, "events": events}
    created = api.post(f"{API}/webhooks", body, format="json", headers=persona.headers)
    assert created.status_code == 201, created.json()
    return created.json()


def fail_a_task(persona, capture) -> Task:
    task = Task.objects.create(company_id=persona.tenant.company_id, app_id=persona.tenant.app_id, prompt="hi")
    with capture(execute=True):
        assert task_services.task_fail(task_id=str(task.id), attempt=None,
                                       error={"code": "provider_error", "message": "down"})
    return task


def deliveries(hook_id: str) -> list[Delivery]:
    return list(Delivery.objects.filter(webhook_id=hook_id))


def test_a_failed_task_is_delivered_signed_with_the_task_object(api, alice, receiver: Receiver, local_hooks,
                                                               django_capture_on_commit_callbacks):
    created = hook(api, alice, receiver.url("/failed"))
    task = fail_a_task(alice, django_capture_on_commit_callbacks)
    [delivery] = deliveries(created["id"])

    assert services.delivery_attempt(delivery_id=str(delivery.id)).attempted

    [received] = receiver.at("/failed")
    payload = received.verified(created["secret"])
    assert payload["type"] == "task.failed"
    assert payload["data"] == api.get(f"{API}/tasks/{task.id}", headers=alice.headers).json()
    assert payload["data"]["error"]["code"] == "provider_error"
    assert received.headers["webhook-id"] == delivery.msg_id
    with pytest.raises(WebhookVerificationError):
        received.verified("whsec_" + "QUJD" * 8)  # another secret
    listed = api.get(f"{API}/webhooks/{created['id']}/deliveries", headers=alice.headers).json()["results"]
    assert [(d["id"], d["status"], d["attempts"], d["last_status_code"]) for d in listed] == [
        (delivery.msg_id, "succeeded", 1, 200)]


def test_an_endpoint_not_subscribed_to_the_event_gets_nothing(api, alice, bob, receiver, local_hooks,
                                                              django_capture_on_commit_callbacks):
    completed_only = hook(api, alice, receiver.url("/completed-only"), events=["task.completed"])
    bobs = hook(api, bob, receiver.url("/bob"))

    fail_a_task(alice, django_capture_on_commit_callbacks)

    assert deliveries(completed_only["id"]) == [] and deliveries(bobs["id"]) == []


def test_an_error_answer_is_retried_with_the_same_webhook_id(api, alice, receiver, local_hooks, quick_retries,
                                                             django_capture_on_commit_callbacks):
    created = hook(api, alice, receiver.url("/flaky"))
    receiver.answers["/flaky"] = [500]
    fail_a_task(alice, django_capture_on_commit_callbacks)
    [delivery] = deliveries(created["id"])

    first = services.delivery_attempt(delivery_id=str(delivery.id))
    second = services.delivery_attempt(delivery_id=str(delivery.id))
    again = services.delivery_attempt(delivery_id=str(delivery.id))  # a duplicate message: nothing is due

    assert first.retry_in_s == 0.0 and second.retry_in_s is None and not again.attempted
    attempts = receiver.at("/flaky")
    assert [r.answered for r in attempts] == [500, 200]
    assert {r.headers["webhook-id"] for r in attempts} == {delivery.msg_id}
    assert attempts[0].body == attempts[1].body
    for received in attempts:
        received.verified(created["secret"])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 2, 200)


def test_a_delivery_gives_up_after_the_schedule(api, alice, receiver, local_hooks, quick_retries,
                                                django_capture_on_commit_callbacks):
    created = hook(api, alice, receiver.url("/down"))
    receiver.answers["/down"] = [503, 503, 503, 503]
    fail_a_task(alice, django_capture_on_commit_callbacks)
    [delivery] = deliveries(created["id"])

    while services.delivery_attempt(delivery_id=str(delivery.id)).retry_in_s is not None:
        pass

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 503)
    assert len(receiver.at("/down")) == 3


def test_an_endpoint_failing_past_the_limit_is_disabled_with_a_note(api, alice, receiver, local_hooks, settings,
                                                                    django_capture_on_commit_callbacks):
    settings.MAGEAGENT = {**settings.MAGEAGENT, "WEBHOOK_DISABLE_AFTER_S": 0.0}
    created = hook(api, alice, receiver.url("/dead"))
    receiver.answers["/dead"] = [500]
    fail_a_task(alice, django_capture_on_commit_callbacks)
    [delivery] = deliveries(created["id"])

    services.delivery_attempt(delivery_id=str(delivery.id))

    shown = api.get(f"{API}/webhooks/{created['id']}", headers=alice.headers).json()
    assert shown["is_active"] is False and "every delivery attempt failed since" in shown["disabled_reason"]
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "disabled" in delivery.last_error
    fail_a_task(alice, django_capture_on_commit_callbacks)
    assert len(deliveries(created["id"])) == 1  # a disabled endpoint gets no new deliveries


def test_after_a_rotation_both_secrets_verify_a_delivery(api, alice, receiver, local_hooks,
                                                         django_capture_on_commit_callbacks):
    created = hook(api, alice, receiver.url("/rotating"))
    new_secret = api.post(f"{API}/webhooks/{created['id']}/rotate-secret", headers=alice.headers).json()["secret"]
    fail_a_task(alice, django_capture_on_commit_callbacks)
    [delivery] = deliveries(created["id"])

    services.delivery_attempt(delivery_id=str(delivery.id))

    [received] = receiver.at("/rotating")
    assert received.verified(new_secret)["type"] == received.verified(created["secret"])["type"] == "task.failed"


def test_a_lost_delivery_message_is_found_by_the_sweep(api, alice, local_hooks, receiver,
                                                       django_capture_on_commit_callbacks):
    created = hook(api, alice, receiver.url("/swept"))
    fail_a_task(alice, django_capture_on_commit_callbacks)
    [delivery] = deliveries(created["id"])

    assert services.deliveries_due(grace_s=0.0) == [str(delivery.id)]
    services.delivery_attempt(delivery_id=str(delivery.id))
    assert services.deliveries_due(grace_s=0.0) == []


def test_every_delivery_passes_the_ssrf_guard_again(api, alice, receiver, local_hooks, settings,
                                                    django_capture_on_commit_callbacks):
    created = hook(api, alice, receiver.url("/no-longer-allowed"))
    settings.MAGEAGENT = {**settings.MAGEAGENT, "FETCH_ALLOWED_HOSTS": []}  # the operator took 127.0.0.1 back
    fail_a_task(alice, django_capture_on_commit_callbacks)
    [delivery] = deliveries(created["id"])

    result = services.delivery_attempt(delivery_id=str(delivery.id))

    assert result.attempted and result.retry_in_s is not None
    assert receiver.at("/no-longer-allowed") == []
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.attempts == 1 and delivery.last_status_code is None
    assert "loopback" in delivery.last_error
