"""Routing in the running service: daphne, a Celery worker and the LLM simulator as
processes, with deployments from a LiteLLM-style config file (several per model, rpm
limits) instead of the one-gateway override."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import API, Client, answer_from_chunks, sim, tokens
from tests.conftest import make_persona
from tests.stack import Stack, own_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SIMPLE = "What is the capital of France?"
MODERATE = "Write a polite email to my landlord asking to fix a leaking kitchen tap this week."

# model_name -> (deployment ids, rpm). Every deployment is the simulator; the body carries
# the name after "openai/", which is what the simulator's fail_models matches.
DEPLOYMENTS = {
    "gpt-4o-mini": (["mini-a", "mini-b"], None),
    "gemini/gemini-2.5-flash-lite": (["flash-lite"], None),
    "gpt-4.1-mini": (["gpt41-mini"], None),
    "claude-haiku-4-5": (["haiku"], None),
    "gpt-4.1": (["gpt41"], None),
    "claude-sonnet-4-5": (["sonnet"], None),
    "command-r7b-12-2024": (["r7b"], None),
    "mistral/mistral-small-latest": (["small-limited"], 60),
    "deepseek-chat": (["deepseek"], None),
    "mistral/mistral-medium-latest": (["medium"], None),
}


def config_yaml() -> str:
    lines = ["model_list:"]
    for model, (ids, rpm) in DEPLOYMENTS.items():
        for dep_id in ids:
            lines += [f"  - model_name: {model}",
                      f"    litellm_params: {{model: openai/{model.split('/')[-1]}, api_base: os.environ/SIM_API_BASE,"
                      f" api_key: sim{', rpm: ' + str(rpm) if rpm else ''}}}",
                      f"    model_info: {{id: {dep_id}}}"]
    return "\n".join(lines) + "\n"


class RoutingStack(Stack):
    def __init__(self, db_url: str, config: Path, namespace: str) -> None:
        super().__init__(db_url, extra_env={
            "MAGEAGENT_LLM_CONFIG": str(config), "MAGEAGENT_ROUTING_REDIS_NAMESPACE": namespace,
            "MAGEAGENT_ROUTING_RATE_LIMIT_BURST_S": "1",
            "MAGEAGENT_ROUTING_COOLDOWN_S": "120",
            # Its own queue: the session's stack (gateway mode) must not take these tasks.
            "MAGEAGENT_QUEUE": own_queue("routing")})

    def env(self) -> dict[str, str]:
        env = super().env()
        env["MAGEAGENT_LLM_API_BASE"] = ""  # the override would win over the config file
        env["SIM_API_BASE"] = f"{self.sim_url}/v1"
        return env


@pytest.fixture(scope="module")
def routed(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[RoutingStack]:
    from django.db import connection

    from tests.stack import database_url

    config = tmp_path_factory.mktemp("routing") / "llm.yaml"
    config.write_text(config_yaml())
    running = RoutingStack(database_url(connection.settings_dict), config, f"ma:e2e:{uuid.uuid4().hex[:8]}")
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def same_namespace(routed: RoutingStack, settings: Any, routing_namespace: str) -> None:
    """Read the stack's cooldowns and budgets from this process too."""
    settings.MAGEAGENT_ROUTING = {**settings.MAGEAGENT_ROUTING,
                                  "REDIS_NAMESPACE": routed.extra_env["MAGEAGENT_ROUTING_REDIS_NAMESPACE"]}


def run(client: Client, prompt: str, **fields: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    task = client.create(prompt, **fields)
    events = [e.data for e in client.sse(task["id"], timeout=60).events]
    return client.get(task["id"]), events


def steps(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e["detail"] for e in events if e["type"] == "step" and e["name"] == name]


def sim_requests(stack: Stack, key: str) -> list[dict[str, Any]]:
    return httpx.get(f"{stack.sim_url}/_sim/requests/{key}").json()


def test_a_provider_outage_falls_back_to_another_deployment_then_another_provider(routed, alice):
    client = Client(routed.web_url, alice.key)
    key = f"outage-{uuid.uuid4()}"
    context = {"additionalContext": sim(tokens=5, error=503, fail_models=["gpt-4o-mini"], key=key)}

    task, events = run(client, SIMPLE, context=context)

    assert task["status"] == "completed" and task["attempts"] == 1
    assert task["result"]["model"] == "gemini/gemini-2.5-flash-lite"
    assert answer_from_chunks(events) == task["result"]["content"] == tokens(5)
    hops = [(f["from_deployment"], f["to_deployment"], f["error"]) for f in steps(events, "fallback")]
    assert hops == [("mini-a", "mini-b", "provider_unavailable"), ("mini-b", "flash-lite", "provider_unavailable")] \
        or hops == [("mini-b", "mini-a", "provider_unavailable"), ("mini-a", "flash-lite", "provider_unavailable")]
    assert [r["model"] for r in sim_requests(routed, key)][-1] == "gemini-2.5-flash-lite"
    # The decision, then what happened, are on the task; the step event carries the decision.
    routing = task["routing"]
    assert routing["model"] == "gpt-4o-mini" and routing["model_used"] == "gemini/gemini-2.5-flash-lite"
    assert routing["candidates"][:2] == ["gpt-4o-mini", "gemini/gemini-2.5-flash-lite"]
    assert routing["estimated_tokens"] > 0 and routing["estimated_cost_usd"] > 0
    assert len(routing["fallbacks"]) == 2 and routing["actual_cost_usd"] == task["result"]["cost_usd"]
    (selected,) = steps(events, "model_selected")
    assert selected["model"] == "gpt-4o-mini" and selected["reason"] == routing["reason"]
    assert "fallback:gemini/gemini-2.5-flash-lite" in task["steps"]


def test_a_429_moves_an_explicit_model_on_when_the_company_allows_fallbacks(routed, charlie):
    from routing.models import CompanyRoutingPolicy

    CompanyRoutingPolicy.objects.create(company_id=charlie.tenant.company_id, policy={"explicit_fallbacks": True})
    client = Client(routed.web_url, charlie.key)
    key = f"429-{uuid.uuid4()}"

    task, events = run(client, "hello", model="gpt-4.1",
                       context={"additionalContext": sim(tokens=4, error=429, fail_models=["gpt-4.1"], key=key)})

    assert task["status"] == "completed" and task["attempts"] == 1
    (hop,) = steps(events, "fallback")
    assert (hop["from"], hop["error"], hop["status"]) == ("gpt-4.1", "rate_limited", 429)
    assert hop["to"] != "gpt-4.1" and task["routing"]["model_used"] == hop["to"]


def test_a_stream_broken_mid_way_falls_back_and_restarts_the_answer_in_the_same_attempt(routed, alice):
    client = Client(routed.web_url, alice.key)
    key = f"broken-{uuid.uuid4()}"
    directive = sim(tokens=8, interval_ms=20, fail_after_tokens=3, fail_models=["gpt-4.1-mini"], key=key)

    task, events = run(client, MODERATE, context={"additionalContext": directive})

    assert task["status"] == "completed" and task["attempts"] == 1
    kinds = [e["type"] for e in events]
    assert kinds.index("chunk") < kinds.index("reset") < len(kinds) - 1
    assert [e["attempt"] for e in events if e["type"] == "reset"] == [1]
    assert answer_from_chunks(events) == task["result"]["content"] == tokens(8)
    broken, served = task["routing"]["calls"]
    assert (broken["model"], broken["error"]) == ("gpt-4.1-mini", "provider_stream_interrupted")
    assert broken["completion_tokens"] > 0 and broken["cost_usd"] > 0  # what the broken stream used is booked
    assert task["result"]["cost_usd"] == pytest.approx(broken["cost_usd"] + served["cost_usd"])


def test_a_context_window_exceeded_reroutes_to_a_larger_context_model(routed, alice):
    client = Client(routed.web_url, alice.key)
    key = f"window-{uuid.uuid4()}"
    directive = sim(tokens=3, error="context_length_exceeded", fail_models=["command-r7b-12-2024"], key=key)

    task, events = run(client, "hi", model="command-r7b-12-2024", context={"additionalContext": directive})

    assert task["status"] == "completed", task["error"]
    (hop,) = steps(events, "fallback")
    assert hop["error"] == "context_window_exceeded" and hop["from"] == "command-r7b-12-2024"
    models = {m["id"]: m for m in client.http.get(f"{API}/models").json()["results"]}
    assert models[hop["to"]]["context_window"] > models["command-r7b-12-2024"]["context_window"]


def test_tasks_over_a_deployments_rpm_wait_for_it_and_none_fails(routed, alice):
    client = Client(routed.web_url, alice.key)  # mistral-small: 60 rpm, one at a time (burst 1 s)

    tasks = [client.create(f"ping {i}", model="mistral/mistral-small-latest") for i in range(3)]
    finished = [client.wait_terminal(t["id"], timeout=60) for t in tasks]
    waits = [steps([e.data for e in client.sse(t["id"]).events], "rate_limited") for t in tasks]

    assert [t["status"] for t in finished] == ["completed"] * 3
    assert sum(1 for w in waits if w) >= 2
    assert all(d["deployment"] == "small-limited" and d["wait_s"] > 0 for w in waits for d in w)


def test_the_cost_of_a_streamed_task_is_its_usage_times_the_catalog_price(routed, bob):
    from routing.models import Spend

    client = Client(routed.web_url, bob.key)

    task, _ = run(client, "count to twelve", model="deepseek-chat",
                  context={"additionalContext": sim(tokens=12, interval_ms=2)})

    usage = task["result"]["usage"]
    price = {m["id"]: m for m in client.http.get(f"{API}/models").json()["results"]}["deepseek-chat"]
    expected = (usage["prompt_tokens"] * price["input_cost_per_mtok"]
                + usage["completion_tokens"] * price["output_cost_per_mtok"]) / 1e6
    assert usage["completion_tokens"] == 12 and usage["prompt_tokens"] > 0
    assert task["result"]["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert task["result"]["tokensUsed"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert task["routing"]["actual_usage"] == usage and task["routing"]["usage_reported"] is True
    spend = Spend.objects.get(company_id=bob.tenant.company_id, app_id=bob.tenant.app_id)
    assert float(spend.cost_usd) == pytest.approx(expected, rel=1e-6) and spend.tasks == 1


def test_an_explicit_model_without_fallbacks_is_retried_by_requeue_with_a_reset(routed, alice):
    client = Client(routed.web_url, alice.key)
    key = f"requeue-{uuid.uuid4()}"

    task, events = run(client, "hello", model="mistral/mistral-medium-latest",
                       context={"additionalContext": sim(tokens=5, error=503, error_times=1, key=key)})

    assert task["status"] == "completed" and task["attempts"] == 2
    assert steps(events, "fallback") == []
    assert any(e["type"] == "reset" and e["attempt"] == 2 for e in events)
    assert answer_from_chunks(events) == tokens(5)


def test_fifty_concurrent_tasks_against_a_budget_for_ten_run_at_most_ten_and_never_overspend(routed, settings):
    from routing.budgets import budget_context, budget_usage
    from routing.models import Budget, Spend
    from tasks.models import Task

    dave = make_persona("dave", "initech", "web")
    budget = Budget.objects.create(company_id=dave.tenant.company_id, period="month", limit_usd=Decimal("100"))
    client = Client(routed.web_url, dave.key)
    # Each answer runs to the budgeted cap (what a reservation assumes), after a delay that
    # keeps all accepted tasks in flight while the 50 requests race.
    body = {"prompt": "Say hi", "model": "claude-sonnet-4-5",
            "context": {"additionalContext": sim(tokens=5000, ttft_ms=1500)}}
    estimate = client.http.post(f"{API}/route", json=body).json()["estimated_cost_usd"]
    budget.limit_usd = Decimal(str(estimate * 10.5))
    budget.save()

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda _: client.http.post(f"{API}/tasks", json=body), range(50)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 10 + [402] * 40
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 402} == {"budget_exceeded"}
    finished = [client.wait_terminal(r.json()["id"], timeout=60) for r in responses if r.status_code == 202]
    assert [t["status"] for t in finished] == ["completed"] * 10
    assert Task.objects.filter(company_id=dave.tenant.company_id).count() == 10
    spent = sum(Spend.objects.filter(company_id=dave.tenant.company_id).values_list("cost_usd", flat=True))
    assert budget.limit_usd * Decimal("0.8") < spent <= budget.limit_usd
    assert all(t["result"]["cost_usd"] <= estimate for t in finished)
    assert {t["result"]["finishReason"] for t in finished} == {"length"}  # capped at the budgeted answer size
    deadline = time.monotonic() + 10
    while True:  # every reservation is settled once the tasks are done
        (live,) = budget_usage(budget_context(company_id=dave.tenant.company_id, app_id=dave.tenant.app_id))
        if live["reserved_usd"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert live["reserved_usd"] == 0 and live["spent_usd"] <= float(budget.limit_usd)
