"""The API's documentation: the index, the schema as clients read it, and pages that need no CDN."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = pytest.mark.django_db
API = "/mageagent/api/v1"
ERROR = {"$ref": "#/components/schemas/Error"}


@pytest.fixture
def schema(client) -> dict[str, Any]:
    response = client.get(f"{API}/schema?format=json")
    assert response.status_code == 200
    return response.json()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, methods in schema["paths"].items() for method, op in methods.items()]


def test_the_api_root_is_an_index_of_the_docs_the_schema_the_health_checks_and_the_console(client):
    response = client.get(f"{API}/")

    assert response.status_code == 200
    links = response.json()["links"]
    assert links == {"docs": f"http://testserver{API}/docs", "redoc": f"http://testserver{API}/redoc",
                     "schema": f"http://testserver{API}/schema", "healthz": "http://testserver/healthz",
                     "readyz": "http://testserver/readyz", "console": "http://testserver/console/"}
    for name in ("docs", "redoc", "schema", "healthz", "console"):
        assert client.get(links[name]).status_code == 200, name


def test_the_site_root_leads_to_the_docs(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == f"{API}/docs"


@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_the_docs_pages_load_only_files_the_service_serves(client, page):
    html = client.get(f"{API}/{page}").content.decode()

    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any("swagger-ui-bundle.js" in a or "redoc.standalone.js" in a for a in assets), assets
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not on this server"
        assert client.get(asset).status_code == 200, asset


def test_every_operation_documents_the_errors_it_can_answer_with_the_error_schema(schema):
    for path, method, op in operations(schema):
        responses = op["responses"]
        # The OpenAI-compatible API answers its errors in OpenAI's shape.
        error = {"$ref": "#/components/schemas/OpenAIError"} if path.startswith("/v1/") else ERROR
        assert responses["503"]["content"]["application/json"]["schema"] == error, (method, path)
        assert "Retry-After" in responses["503"]["headers"]
        if op.get("security"):
            assert responses["401"]["content"]["application/json"]["schema"] == error, (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in op:
            assert {"400", "413", "415"} <= set(responses), (method, path)

    create = schema["paths"][f"{API}/tasks"]["post"]["responses"]
    assert {"200", "202", "400", "401", "402", "409", "413", "415", "429", "503"} <= set(create)
    assert "409" in schema["paths"][f"{API}/tasks/{{task_id}}/cancel"]["post"]["responses"]
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert set(schema["components"]["schemas"]["ErrorDetail"]["properties"]) == {"code", "message", "details"}


def test_the_key_may_be_sent_as_a_bearer_token_or_an_x_api_key_header(schema):
    assert schema["components"]["securitySchemes"] == {
        "BearerAuth": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
        "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "`X-API-Key: <key>`"},
    }
    assert schema["paths"][f"{API}/tasks"]["post"]["security"] == [{"BearerAuth": []}, {"ApiKeyAuth": []}]
    assert "security" not in schema["paths"][f"{API}/"]["get"]


@pytest.mark.parametrize("path", ["tasks", "knowledge/documents", "files", "webhooks",
                                  "webhooks/{webhook_id}/deliveries"])
def test_lists_are_documented_as_results_and_next_with_their_pagination_parameters(schema, path):
    op = schema["paths"][f"{API}/{path}"]["get"]

    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(page["required"]) == {"results", "next"}
    assert page["properties"]["results"]["type"] == "array"
    assert page["properties"]["next"]["nullable"] is True
    params = {p["name"]: p["schema"] for p in op["parameters"]}
    assert params["page_size"] == {"type": "integer", "minimum": 1, "maximum": 200}
    assert "cursor" in params


def test_request_bodies_are_documented_as_the_api_checks_them(schema):
    task = schema["components"]["schemas"]["TaskInputRequest"]

    assert task["additionalProperties"] is False  # unknown fields are a 400
    assert task["properties"]["prompt"]["minLength"] == 1
    assert (task["properties"]["priority"]["minimum"], task["properties"]["priority"]["maximum"]) == (0, 9)
    output = schema["components"]["schemas"]["TaskOutput"]["properties"]["priority"]
    assert (output["minimum"], output["maximum"]) == (0, 9)
    events = {p["name"]: p for p in schema["paths"][f"{API}/tasks/{{task_id}}/events"]["get"]["parameters"]}
    assert events["after"]["schema"]["minimum"] == 0


def test_the_sse_stream_and_the_sockets_are_described(schema):
    stream = schema["paths"][f"{API}/tasks/{{task_id}}/stream"]["get"]

    assert set(stream["responses"]["200"]["content"]) == {"text/event-stream"}
    assert {p["name"] for p in stream["parameters"]} == {"task_id", "after", "Last-Event-ID", "token"}
    assert stream["responses"]["404"]["content"]["application/json"]["schema"] == ERROR
    description = schema["info"]["description"]
    for protocol in ("/mageagent/api/v1/tasks/{id}/ws", "/mageagent/ws", "/socket.io/", "subscribe-task",
                     "task-update", "Last-Event-ID"):
        assert protocol in description, protocol
