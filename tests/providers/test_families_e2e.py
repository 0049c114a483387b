"""Every provider family end to end: daphne, a Celery worker and the LLM simulator as
processes, with deployments (a LiteLLM-style config) that point an Anthropic, a Gemini, a
Cohere and an OpenAI-compatible model at the simulator, which answers each in its own wire
protocol. The worker runs the production code for each: the direct streams
(providers/llm.py, providers/families.py), their requests mapped by litellm."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import API, Client, answer_from_chunks, sim, tokens, wait_for
from tests.stack import Stack, own_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# family -> (catalog model, litellm model, api_base under the simulator, the name the
# simulator sees: the request body's model, or for Gemini the one in the URL)
FAMILIES = {
    "anthropic": ("claude-haiku-4-5", "anthropic/claude-haiku-4-5", "", "claude-haiku-4-5"),
    "gemini": ("gemini/gemini-2.5-flash", "gemini/gemini-2.5-flash", "/v1beta", "gemini-2.5-flash"),
    "cohere": ("command-r7b-12-2024", "cohere_chat/command-r7b-12-2024", "/v2/chat", "command-r7b-12-2024"),
    "openai": ("gpt-4o-mini", "openai/gpt-4o-mini", "/v1", "gpt-4o-mini"),
}
# Each family's own retryable error, and the code and status the fallback event reports.
ERRORS = {
    "anthropic": (529, "provider_unavailable"),  # overloaded_error
    "gemini": (429, "rate_limited"),  # RESOURCE_EXHAUSTED
    "cohere": (429, "rate_limited"),
    "openai": (503, "provider_unavailable"),
}
families = pytest.mark.parametrize("family", list(FAMILIES))


def config_yaml() -> str:
    lines = ["model_list:"]
    for family, (model, litellm_model, _, _) in FAMILIES.items():
        lines += [f"  - model_name: {model}",
                  f"    litellm_params: {{model: {litellm_model}, api_base: os.environ/SIM_BASE_{family.upper()},"
                  f" api_key: sim-{family}-key}}",
                  f"    model_info: {{id: {family}}}"]
    return "\n".join(lines) + "\n"


class FamiliesStack(Stack):
    def __init__(self, db_url: str, config: Path) -> None:
        super().__init__(db_url, extra_env={
            "MAGEAGENT_LLM_CONFIG": str(config),
            "MAGEAGENT_ROUTING_REDIS_NAMESPACE": f"ma:e2e:{uuid.uuid4().hex[:8]}",
            # A failed deployment cools down; the next test may need it again.
            "MAGEAGENT_ROUTING_COOLDOWN_S": "1",
            "MAGEAGENT_QUEUE": own_queue("families")})

    def env(self) -> dict[str, str]:
        env = super().env()
        env["MAGEAGENT_LLM_API_BASE"] = ""  # the one-gateway override would win over the config
        for family, (_, _, path, _) in FAMILIES.items():
            env[f"SIM_BASE_{family.upper()}"] = self.sim_url + path
        return env


@pytest.fixture(scope="module")
def stack_families(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[FamiliesStack]:
    from django.db import connection

    from tests.stack import database_url

    config = tmp_path_factory.mktemp("families") / "llm.yaml"
    config.write_text(config_yaml())
    running = FamiliesStack(database_url(connection.settings_dict), config).start()
    try:
        yield running
    finally:
        running.stop()


def run(client: Client, prompt: str, **fields: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    task = client.create(prompt, **fields)
    events = [e.data for e in client.sse(task["id"], timeout=60).events]
    return client.get(task["id"]), events


def sim_requests(stack: Stack, key: str) -> list[dict[str, Any]]:
    return httpx.get(f"{stack.sim_url}/_sim/requests/{key}").json()


def typed(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def streamed_answer(client: Client, family: str, key: str) -> dict[str, Any]:
    """A task on `family` whose answer the simulator streams word by word, checked exact."""
    text = f"Bonjour from {family}: the simulator speaks its protocol, word by word."

    task, events = run(client, "Say hello", model=FAMILIES[family][0],
                       context={"additionalContext": sim(text=text, interval_ms=2, key=key)})

    assert task["status"] == "completed", task["error"]
    assert len(typed(events, "chunk")) > 1
    assert answer_from_chunks(events) == task["result"]["content"] == text
    return task


@families
def test_a_task_streams_the_exact_answer_and_books_the_providers_own_usage(stack_families, alice, family):
    model = FAMILIES[family][0]
    client = Client(stack_families.web_url, alice.key)
    key = f"answer-{family}-{uuid.uuid4()}"

    task = streamed_answer(client, family, key)

    (record,) = sim_requests(stack_families, key)
    assert record.get("family") == (None if family == "openai" else family)
    assert record["model"] == FAMILIES[family][3] and record["status"] == "completed"
    if family != "openai":
        assert record["api_key"] == f"sim-{family}-key"
    if family == "gemini":
        assert record["query"] == "alt=sse"
    usage = task["result"]["usage"]
    if family == "openai":
        reported = {"prompt_tokens": record["prompt_tokens"], "completion_tokens": record["tokens_sent"]}
    else:
        reported = record["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (reported["prompt_tokens"],
                                                                    reported["completion_tokens"])
    price = {m["id"]: m for m in client.http.get(f"{API}/models").json()["results"]}[model]
    expected = (usage["prompt_tokens"] * price["input_cost_per_mtok"]
                + usage["completion_tokens"] * price["output_cost_per_mtok"]) / 1e6
    assert task["result"]["cost_usd"] == pytest.approx(expected, rel=1e-9) and expected > 0
    assert task["routing"]["usage_reported"] is True


@families
def test_a_tool_round_trip_through_each_family(stack_families, alice, family):
    model = FAMILIES[family][0]
    client = Client(stack_families.web_url, alice.key)
    key = f"tool-{family}-{uuid.uuid4()}"
    directive = sim(tool_calls=[{"name": "graphrag_search", "arguments": {"query": "refund policy"}}], tokens=3,
                    key=key)

    task, events = run(client, f"What is our refund policy? {directive}", model=model, tools=["graphrag_search"])

    assert task["status"] == "completed", (task["error"], events)
    [call], [result] = typed(events, "tool_call"), typed(events, "tool_result")
    assert call["name"] == "graphrag_search" and json.loads(call["arguments"]) == {"query": "refund policy"}
    assert (result["id"], result["name"], result["ok"]) == (call["id"], "graphrag_search", True)
    assert task["result"]["content"].startswith("[tool:graphrag_search ")
    assert task["result"]["content"].endswith(tokens(3))
    first, second = sim_requests(stack_families, key)
    assert first["finish_reason"] == "tool_calls" and second["finish_reason"] == "stop"


# What each family's request carries for the same task parameters, in its own form.
def _received(family: str, body: dict[str, Any]) -> dict[str, Any]:
    if family == "anthropic":
        return {"system": " ".join(b["text"] for b in body["system"]), "temperature": body["temperature"],
                "max_tokens": body["max_tokens"], "stop": body["stop_sequences"],
                "tools": [t["name"] for t in body["tools"]], "schema": body["tools"][0]["input_schema"]}
    if family == "gemini":
        config = body["generationConfig"]
        system_text = " ".join(p["text"] for p in body["system_instruction"]["parts"])
        declarations = body["tools"][0]["function_declarations"]
        return {"system": system_text, "temperature": config["temperature"],
                "max_tokens": config["max_output_tokens"], "stop": config["stop_sequences"],
                "tools": [d["name"] for d in declarations], "schema": declarations[0]["parameters"]}
    system_text = " ".join(m["content"] for m in body["messages"] if m["role"] == "system")
    return {"system": system_text, "temperature": body["temperature"], "max_tokens": body["max_tokens"],
            "stop": body["stop_sequences"] if family == "cohere" else body["stop"],
            "tools": [t["function"]["name"] for t in body["tools"]],
            "schema": body["tools"][0]["function"]["parameters"]}


@families
def test_task_parameters_reach_each_family_in_its_own_form(stack_families, alice, family):
    model = FAMILIES[family][0]
    client = Client(stack_families.web_url, alice.key)

    task, _ = run(client, f"Describe yourself {sim(echo=True)}", model=model, tools=["graphrag_search"],
                  system="Answer like a pirate.", temperature=0.25, max_tokens=300, stop=["ARRR"])

    assert task["status"] == "completed", task["error"]
    body = json.loads(task["result"]["content"])
    received = _received(family, body)
    assert "Answer like a pirate." in received["system"]
    assert (received["temperature"], received["max_tokens"], received["stop"]) == (0.25, 300, ["ARRR"])
    assert received["tools"] == ["graphrag_search"]
    assert received["schema"]["properties"]["query"]["type"] == "string"


@families
def test_json_mode_reaches_each_family_in_its_own_form(stack_families, alice, family):
    model = FAMILIES[family][0]
    client = Client(stack_families.web_url, alice.key)

    task, events = run(client, f"Give me JSON {sim(echo=True)}", model=model,
                       response_format={"type": "json_object"})

    assert task["status"] == "completed", task["error"]
    body = json.loads(task["result"]["content"])
    if family == "gemini":
        assert body["generationConfig"]["response_mime_type"] == "application/json"
    elif family == "openai":
        assert body["response_format"] == {"type": "json_object"}
    elif family == "anthropic":
        # Anthropic's JSON mode: a forced tool taking any object, whose input (here the echoed
        # request) streams back as the answer's text.
        assert body["tools"] == [{"name": "json_tool_call", "input_schema": {
            "type": "object", "additionalProperties": True, "properties": {}}}]
        assert body["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
        assert not typed(events, "tool_call") and task["result"]["finishReason"] == "stop"
    else:  # Cohere chat v2's own field (mapped by providers/families.py, litellm maps none)
        assert body["response_format"] == {"type": "json_object"}
        assert not [e for e in events if e["type"] == "step" and e["name"] == "params_dropped"]


@pytest.mark.parametrize("family", ["anthropic", "cohere"])
def test_a_json_schema_reaches_the_family_in_its_own_form(stack_families, alice, family):
    client = Client(stack_families.web_url, alice.key)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

    task, _ = run(client, f"Where? {sim(echo=True)}", model=FAMILIES[family][0],
                  response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})

    assert task["status"] == "completed", task["error"]
    body = json.loads(task["result"]["content"])
    if family == "anthropic":  # structured output, claude-haiku-4-5 having it natively
        assert body["output_format"] == {"type": "json_schema", "schema": {**schema, "additionalProperties": False}}
        assert "tools" not in body
    else:  # chat v2: JSON mode with the schema beside it
        assert body["response_format"] == {"type": "json_object", "json_schema": schema}


def test_cohere_json_mode_with_tools_is_left_out_and_noted(stack_families, alice):
    client = Client(stack_families.web_url, alice.key)

    task, events = run(client, f"Give me JSON {sim(echo=True)}", model=FAMILIES["cohere"][0],
                       tools=["graphrag_search"], response_format={"type": "json_object"})

    # Cohere refuses response_format with tools (the simulator too): the task still runs.
    assert task["status"] == "completed", task["error"]
    body = json.loads(task["result"]["content"])
    dropped = [e["detail"] for e in events if e["type"] == "step" and e["name"] == "params_dropped"]
    assert "response_format" not in body and [t["function"]["name"] for t in body["tools"]] == ["graphrag_search"]
    assert dropped[0]["params"] == ["response_format"]


def cancel_mid_stream(stack: Stack, client: Client, model: str, key: str) -> dict[str, Any]:
    """Cancel a long answer once it streams; the simulator's record of its stream once ended."""
    task = client.create("Talk for a while", model=model,
                         context={"additionalContext": sim(tokens=2000, interval_ms=20, key=key)})
    client.sse(task["id"], stop_after=1)
    wait_for(lambda: [r for r in sim_requests(stack, key) if r["tokens_sent"] > 0], "tokens streaming")

    response = client.http.post(f"{API}/tasks/{task['id']}/cancel")

    assert response.status_code == 200, response.text
    assert client.wait_terminal(task["id"], timeout=30)["status"] == "cancelled"
    (record,) = wait_for(lambda: [r for r in sim_requests(stack, key) if r["status"] != "streaming"],
                         "the simulator to see the stream end", 10)
    return record


@families
def test_cancel_closes_the_providers_stream(stack_families, alice, family):
    client = Client(stack_families.web_url, alice.key)

    record = cancel_mid_stream(stack_families, client, FAMILIES[family][0], f"cancel-{family}-{uuid.uuid4()}")

    assert record["status"] == "client_closed" and record["tokens_sent"] < record["tokens_planned"]


@families
def test_a_stream_broken_mid_way_is_retried_with_a_reset(stack_families, alice, family):
    model = FAMILIES[family][0]
    client = Client(stack_families.web_url, alice.key)
    key = f"reset-{family}-{uuid.uuid4()}"
    # Anthropic and Gemini send their own in-stream error event before closing; the others drop.
    directive = sim(tokens=8, interval_ms=20, fail_after_tokens=3, error_times=1, stream_error=True, key=key)

    task, events = run(client, "Count slowly", model=model, context={"additionalContext": directive})

    assert task["status"] == "completed", task["error"]
    kinds = [e["type"] for e in events]
    assert kinds.index("chunk") < kinds.index("reset") < len(kinds) - 1
    assert answer_from_chunks(events) == task["result"]["content"] == tokens(8)
    broken, served = sim_requests(stack_families, key)
    assert (broken["status"], broken["tokens_sent"], served["status"]) == ("aborted", 3, "completed")


def wait_for_no_cooldowns(stack: FamiliesStack, settings: Any) -> None:
    """The previous test's failed deployment may still be cooling down (1 s here): this
    test's fallback target must not be."""
    from routing.deployments import registry, registry_reset

    settings.MAGEAGENT_ROUTING = {**settings.MAGEAGENT_ROUTING,
                                  "REDIS_NAMESPACE": stack.extra_env["MAGEAGENT_ROUTING_REDIS_NAMESPACE"]}
    registry_reset()
    try:
        wait_for(lambda: not registry().cooling(list(FAMILIES)), "the deployments' cooldowns to end", 15)
    finally:
        registry_reset()


@families
def test_a_retryable_provider_error_falls_back_to_another_provider(stack_families, charlie, family, settings):
    from routing.models import CompanyRoutingPolicy

    wait_for_no_cooldowns(stack_families, settings)

    CompanyRoutingPolicy.objects.update_or_create(company_id=charlie.tenant.company_id,
                                                  defaults={"policy": {"explicit_fallbacks": True}})
    model, _, _, sim_name = FAMILIES[family]
    status, code = ERRORS[family]
    client = Client(stack_families.web_url, charlie.key)
    key = f"fallback-{family}-{uuid.uuid4()}"
    directive = sim(tokens=4, error=status, fail_models=[sim_name], key=key)

    task, events = run(client, "hello", model=model, context={"additionalContext": directive})

    assert task["status"] == "completed", task["error"]
    (hop,) = [e["detail"] for e in events if e["type"] == "step" and e["name"] == "fallback"]
    assert (hop["from"], hop["error"]) == (model, code)
    assert hop["to"] != model and task["routing"]["model_used"] == hop["to"]
    assert answer_from_chunks(events) == tokens(4)
    failed, served = sim_requests(stack_families, key)
    assert (failed["model"], failed["http_status"], failed["status"]) == (sim_name, status, "error")
    assert served["model"] != sim_name and served["status"] == "completed"
