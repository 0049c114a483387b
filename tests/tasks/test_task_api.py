"""The REST contract in-process: validation, tenancy, idempotency, listing, cancel."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = "/mageagent/api/v1/tasks"


def post(api, persona, body, **headers):
    return api.post(TASKS, body, format="json", HTTP_AUTHORIZATION=f"Bearer {persona.key}", **headers)


def get(api, persona, path, **params):
    return api.get(path, params, HTTP_AUTHORIZATION=f"Bearer {persona.key}")


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_creating_a_task_answers_202_with_the_task_and_its_location(api, alice):
    response = post(api, alice, {"prompt": "hi", "metadata": {"ticket": 7}, "priority": 5})

    assert response.status_code == 202
    task = response.json()
    assert response["Location"] == f"{TASKS}/{task['id']}"
    assert task["status"] == "queued" and task["attempts"] == 1
    assert task["company_id"] == "acme" and task["app_id"] == "web"
    assert task["context"] == {"useGraphRAG": False, "graphragQuery": None, "additionalContext": None}
    assert task["metadata"] == {"ticket": 7} and task["priority"] == 5
    assert task["result"] is None and task["error"] is None
    assert task["estimated_duration_ms"] > 0


def test_the_stored_task_reads_back_as_the_answer_showed_it(api, alice):
    # Every field, JSON and timestamps included, reads back as the answer showed it.
    body = {"prompt": "hi \u00e9\u00e8 \U0001f600", "metadata": {"ticket": 7, "tags": ["a"]}, "priority": 3,
            "tools": ["file_processing"], "stream": False, "context": {"additionalContext": "x"}}
    response = post(api, alice, body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert response.status_code == 202, response.content
    answered = response.json()

    stored = get(api, alice, f"{TASKS}/{answered['id']}").json()
    row = Task.objects.get(pk=answered["id"])
    assert stored == answered
    assert row.idempotency_key == "k-1" and len(row.request_hash) == 64
    assert timedelta(0) <= row.updated_at - row.created_at < timedelta(seconds=1)
    assert (row.status, row.attempts, row.worker, row.steps) == ("queued", 1, "", [])


@pytest.mark.parametrize("body, field", [
    ({}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "hi", "colour": "red"}, "colour"),
    ({"prompt": "hi", "priority": 10}, "priority"),
    ({"prompt": "hi", "priority": "high"}, "priority"),
    ({"prompt": "hi", "tools": ["teleport"]}, None),
    ({"prompt": "hi", "tools": "web_search"}, "tools"),
    ({"prompt": "hi", "context": {"useGraphRAG": "maybe"}}, "context"),
    ({"prompt": "hi", "context": {"secret": 1}}, "context"),
    ({"prompt": "hi", "model": "no-such-model-anywhere"}, None),
    ({"prompt": "hi", "stream": "yes please"}, "stream"),
    ({"prompt": 42}, None),
])
def test_bad_input_is_a_400_in_the_contract_shape_and_creates_nothing(api, alice, body, field):
    response = post(api, alice, body)

    assert_error(response, 400, "validation_error")
    if field:
        assert field in response.json()["error"]["details"]
    assert Task.objects.count() == 0


def test_a_body_that_is_not_json_is_a_400(api, alice):
    response = api.post(TASKS, "{nope", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert_error(response, 400, "validation_error")


def test_a_body_over_the_paths_limit_is_a_413_before_it_is_read(alice):
    import orjson

    from mageagent.handlers import max_request_bytes
    from tests.mageagent.test_handlers import request

    # A prompt may be as long as the largest model's window (the path's limit follows it).
    too_big = max_request_bytes(TASKS) + 1
    sent, read = request(TASKS, [(b"content-length", str(too_big).encode()),
                                 (b"authorization", f"Bearer {alice.key}".encode())], [b""])

    assert sent[0]["status"] == 413 and read == 0
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


def test_the_same_idempotency_key_returns_the_original_task_and_enqueues_nothing(api, alice):
    first = post(api, alice, {"prompt": "once"}, HTTP_IDEMPOTENCY_KEY="k-1")
    second = post(api, alice, {"prompt": "once"}, HTTP_IDEMPOTENCY_KEY="k-1")

    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert Task.objects.count() == 1


def test_the_same_idempotency_key_with_another_body_is_a_409(api, alice):
    post(api, alice, {"prompt": "once"}, HTTP_IDEMPOTENCY_KEY="k-2")

    response = post(api, alice, {"prompt": "twice"}, HTTP_IDEMPOTENCY_KEY="k-2")

    assert_error(response, 409, "conflict")


def test_idempotency_keys_belong_to_one_app(api, alice, bob):
    a = post(api, alice, {"prompt": "same"}, HTTP_IDEMPOTENCY_KEY="shared")
    b = post(api, bob, {"prompt": "same"}, HTTP_IDEMPOTENCY_KEY="shared")

    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_another_companys_task_does_not_exist_on_any_endpoint(api, alice, charlie):
    task_id = post(api, alice, {"prompt": "mine"}).json()["id"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {charlie.key}"}

    for path in (f"{TASKS}/{task_id}", f"{TASKS}/{task_id}/events", f"{TASKS}/{task_id}/stream"):
        assert_error(api.get(path, **auth), 404, "not_found")
    assert_error(api.post(f"{TASKS}/{task_id}/cancel", **auth), 404, "not_found")
    assert get(api, charlie, TASKS).json()["results"] == []
    assert Task.objects.get(pk=task_id).status != TaskStatus.CANCELLED  # charlie could not cancel it


def test_apps_of_one_company_see_the_companys_tasks(api, alice, bob):
    task_id = post(api, alice, {"prompt": "shared within acme"}).json()["id"]

    assert get(api, bob, f"{TASKS}/{task_id}").status_code == 200


def test_an_unknown_or_malformed_task_id_is_a_404(api, alice):
    assert_error(get(api, alice, f"{TASKS}/{uuid.uuid4()}"), 404, "not_found")
    assert_error(get(api, alice, f"{TASKS}/not-a-uuid"), 404, "not_found")


def test_a_revoked_key_is_refused(api, alice):
    from mageagent.tenancy.models import ApiKey
    from mageagent.tenancy.services import api_key_revoke

    api_key_revoke(api_key=ApiKey.objects.get(pk=alice.tenant.key_id))

    assert_error(get(api, alice, TASKS), 401, "authentication_failed")


def test_listing_is_newest_first_with_filters_and_cursor_pages(api, alice):
    ids = [post(api, alice, {"prompt": f"p{i}", "model": "gpt-4o-mini" if i % 2 else None}).json()["id"]
           for i in range(5)]
    Task.objects.filter(pk=ids[0]).update(status=TaskStatus.FAILED)

    page = get(api, alice, TASKS, page_size=2).json()
    rest = api.get(page["next"], HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()

    assert [t["id"] for t in page["results"]] == ids[::-1][:2]
    assert [t["id"] for t in rest["results"]] == ids[::-1][2:4]
    assert [t["id"] for t in get(api, alice, TASKS, status="failed").json()["results"]] == [ids[0]]
    assert {t["id"] for t in get(api, alice, TASKS, model="gpt-4o-mini").json()["results"]} == {ids[1], ids[3]}
    assert_error(get(api, alice, TASKS, status="sleeping"), 400, "validation_error")
    assert_error(get(api, alice, TASKS, created_after="yesterday"), 400, "validation_error")
    future = get(api, alice, TASKS, created_after="2999-01-01T00:00:00Z").json()
    assert future["results"] == []


def test_polling_events_of_a_new_task_shows_it_queued(api, alice):
    task_id = post(api, alice, {"prompt": "x"}).json()["id"]

    page = get(api, alice, f"{TASKS}/{task_id}/events", after=0).json()

    assert page["done"] is False
    assert page["events"][0]["seq"] == 1 and page["events"][0]["type"] == "status"
    assert_error(get(api, alice, f"{TASKS}/{task_id}/events", after=-1), 400, "validation_error")


def test_queue_metrics_count_only_the_callers_company(api, alice, charlie):
    post(api, alice, {"prompt": "a"})
    post(api, charlie, {"prompt": "c"})
    Task.objects.filter(company_id=charlie.tenant.company_id).update(status=TaskStatus.FAILED)

    metrics = get(api, alice, "/mageagent/api/v1/queue/metrics").json()

    assert set(metrics) == {"waiting", "active", "completed", "failed", "cancelled", "delayed",
                            "avg_processing_ms", "p95_processing_ms", "throughput_per_min", "workers",
                            "fair"}  # fair scheduling's own counts, added beside the contract's fields
    assert metrics["failed"] == 0
    assert metrics["waiting"] + metrics["active"] + metrics["completed"] >= 1


def test_a_task_is_accepted_when_the_broker_fails_after_the_commit(api, alice, monkeypatch):
    import redis

    from tasks import services

    def broker_down(**_: object) -> None:
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(services, "task_dispatch", broker_down)

    response = post(api, alice, {"prompt": "keep me"}, HTTP_IDEMPOTENCY_KEY="k-broker")
    retry = post(api, alice, {"prompt": "keep me"}, HTTP_IDEMPOTENCY_KEY="k-broker")

    assert response.status_code == 202, response.content
    assert Task.objects.get(pk=response.json()["id"]).status == TaskStatus.QUEUED  # the reconciler's to re-send
    assert retry.status_code == 200 and retry.json()["id"] == response.json()["id"]
    assert Task.objects.count() == 1


def test_a_replay_returns_the_original_task_after_its_model_was_disabled(api, alice):
    from routing.catalog import catalog_ensure
    from routing.models import Model
    from routing.selectors import catalog_invalidate

    catalog_ensure()  # an earlier test's flush may have emptied the catalog table
    first = post(api, alice, {"prompt": "pinned", "model": "gpt-4o-mini"}, HTTP_IDEMPOTENCY_KEY="k-model")
    assert Model.objects.filter(id="gpt-4o-mini").update(enabled=False) == 1
    catalog_invalidate()
    try:
        replay = post(api, alice, {"prompt": "pinned", "model": "gpt-4o-mini"}, HTTP_IDEMPOTENCY_KEY="k-model")
        fresh = post(api, alice, {"prompt": "pinned", "model": "gpt-4o-mini"}, HTTP_IDEMPOTENCY_KEY="k-new")
    finally:
        Model.objects.filter(id="gpt-4o-mini").update(enabled=True)
        catalog_invalidate()

    assert first.status_code == 202
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert replay["Location"] == f"{TASKS}/{first.json()['id']}"
    assert_error(fresh, 400, "validation_error")  # a new request is still refused


def test_a_replay_returns_the_original_task_when_the_budget_is_now_exhausted(api, alice):
    from decimal import Decimal

    from routing.models import Budget

    first = post(api, alice, {"prompt": "What is 2 + 2?"}, HTTP_IDEMPOTENCY_KEY="k-budget")
    Budget.objects.create(company_id=alice.tenant.company_id, period="month", limit_usd=Decimal("0.0000001"))

    replay = post(api, alice, {"prompt": "What is 2 + 2?"}, HTTP_IDEMPOTENCY_KEY="k-budget")
    changed = post(api, alice, {"prompt": "What is 3 + 3?"}, HTTP_IDEMPOTENCY_KEY="k-budget")

    assert first.status_code == 202
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert_error(changed, 409, "conflict")  # another body under the key is still a conflict


@pytest.mark.parametrize("cursor", ["not-a-cursor!", "cD1ub3QtYS1kYXRl"])  # garbage; base64 of "p=not-a-date"
def test_an_invalid_cursor_is_a_400(api, alice, cursor):
    post(api, alice, {"prompt": "listed"})

    assert_error(get(api, alice, TASKS, cursor=cursor), 400, "validation_error")
