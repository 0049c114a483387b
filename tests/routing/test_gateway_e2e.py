"""With MAGEAGENT_LLM_API_BASE (the session's stack), every routed model goes to the one
gateway under its own catalog name."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.clients import Client, sim

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

COMPLEX = ("Design a URL shortener that handles 10,000 writes per second. Cover the data model, ID generation, "
           "caching, replication, failure handling and sharding as it grows to 50 billion links.")


def test_a_routed_task_reaches_the_gateway_under_the_routed_models_name(stack, alice):
    client = Client(stack.web_url, alice.key)
    key = f"gateway-{uuid.uuid4()}"

    task = client.wait_terminal(client.create(COMPLEX, context={"additionalContext": sim(tokens=6, key=key)})["id"])

    (request,) = httpx.get(f"{stack.sim_url}/_sim/requests/{key}").json()
    routing = task["routing"]
    assert task["status"] == "completed"
    assert request["model"] == routing["model_used"] == routing["model"]
    assert routing["tier"] == 3 and "complex" in routing["characteristics"]
    assert task["result"]["cost_usd"] == routing["actual_cost_usd"] > 0
