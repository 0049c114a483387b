"""Root-path operations endpoints and the API's self-description."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_credentials(client):
    response = client.get("/healthz")

    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_503_without_a_live_worker_and_names_what_is_missing(client):
    from tasks import events
    from tasks.runtime.heartbeat import WORKER_KEY

    client_redis = events.sync_client()
    for key in client_redis.scan_iter(match=f"{WORKER_KEY}*"):
        client_redis.delete(key)

    response = client.get("/readyz")

    assert response.status_code == 503
    details = response.json()["error"]["details"]
    assert details["database"] == "ok" and details["redis"] == "ok" and details["workers"] == "none"


def test_readyz_is_200_once_a_worker_heartbeats(client):
    from tasks import events
    from tasks.runtime.heartbeat import WORKER_KEY

    events.sync_client().set(f"{WORKER_KEY}test-worker", "0", ex=5)

    response = client.get("/readyz")

    assert response.status_code == 200 and response.json()["status"] == "ready"


def test_metrics_are_prometheus_text(client):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"mageagent_tasks_waiting " in response.content
    assert b'mageagent_tasks_finished_total{status="completed"}' in response.content


def test_metrics_need_the_token_when_one_is_set(client, settings):
    settings.MAGEAGENT = {**settings.MAGEAGENT, "METRICS_TOKEN": "s3cret"}

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    refused = client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong")
    assert refused.json()["error"]["code"] == "authentication_failed"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_the_queue_gauge_counts_the_brokers_waiting_messages(client):
    from mageagent import broker
    from tasks.services import task_send

    before = broker.queue_length()
    task_send(task_id="00000000-0000-0000-0000-000000000001", priority=0)
    task_send(task_id="00000000-0000-0000-0000-000000000002", priority=7)

    assert broker.queue_length() == before + 2
    assert f"mageagent_tasks_waiting {before + 2:.1f}".encode() in client.get("/metrics").content


def test_the_openapi_schema_describes_the_task_endpoints(client):
    response = client.get("/mageagent/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/mageagent/api/v1/tasks" in schema["paths"]
    assert "/mageagent/api/v1/tasks/{task_id}/cancel" in schema["paths"]


def test_the_docs_page_renders(client):
    response = client.get("/mageagent/api/v1/docs")

    assert response.status_code == 200 and b"swagger" in response.content.lower()


def test_unknown_paths_are_404_in_the_contract_shape(client):
    response = client.get("/mageagent/api/v1/nothing-here")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_model_catalog_lists_models_with_prices(api, alice):
    response = api.get("/mageagent/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 200
    models = response.json()["results"]
    assert len(models) >= 320
    assert {"id", "provider", "context_window", "input_cost_per_mtok", "output_cost_per_mtok",
            "supports_tools", "enabled"} <= set(models[0])


def test_the_tool_list_gives_json_schema_parameters(api, alice):
    response = api.get("/mageagent/api/v1/tools", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 200
    for tool in response.json()["results"]:
        assert tool["parameters"]["type"] == "object"


def test_route_is_a_dry_run_that_names_the_model(api, alice):
    from tasks.models import Task

    response = api.post("/mageagent/api/v1/route", {"prompt": "hello", "model": "gpt-4o-mini"}, format="json",
                        HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 200
    decision = response.json()
    assert decision["model"] == "gpt-4o-mini" and decision["provider"] == "openai"
    assert {"reason", "candidates", "estimated_cost_usd", "estimated_tokens"} <= set(decision)
    assert Task.objects.count() == 0
