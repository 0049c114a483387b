"""What a call reserves against a budget bounds what it costs: the prompt is counted with
the tool schemas sent on every call and the routed model's tokenizer, the answer is capped
on every budgeted call (tool rounds and fallbacks too), and waiting for a rate limit does
not run the attempt out of time."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import litellm
import pytest

from mageagent.ratelimit import rate_limit_try
from providers.conversation import conversation_messages
from providers.llm import Delta, ProviderError
from routing.budgets import budget_context
from routing.models import Budget
from routing.pricing import TOOL_PROMPT_TOKENS
from routing.runtime import AttemptRouter
from routing.services import model_select
from tasks import events
from tasks.runtime import pipeline
from tasks.runtime.loop import runtime
from tasks.runtime.pipeline import AttemptPlan, run_attempt
from tools.registry import tool_specs

pytestmark = pytest.mark.django_db

TOOLS = ["code_execution", "file_processing"]
ROUTE = "/mageagent/api/v1/route"


def messages_for(prompt: str) -> list[dict[str, Any]]:
    # What the executor sends for a prompt-only task (tasks/runtime/executor.py _messages).
    return conversation_messages(prompt=prompt)


def test_the_estimate_counts_the_tool_schemas_sent_with_every_call(api, alice):
    body = {"prompt": "What is 2 + 2?", "model": "gpt-4o-mini"}
    plain = api.post(ROUTE, body, format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    with_tools = api.post(ROUTE, {**body, "tools": TOOLS}, format="json",
                          HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()

    assert with_tools["estimated_prompt_tokens"] > plain["estimated_prompt_tokens"] + 100
    assert with_tools["estimated_prompt_tokens"] == litellm.token_counter(
        model="gpt-4o-mini", messages=messages_for("What is 2 + 2?"), tools=tool_specs(TOOLS))


def test_the_estimate_uses_the_routed_models_tokenizer_and_its_tool_prompt(alice):
    prompt = "Résumé: naïve coöperation — 東京 の 天気 は? " * 20

    decision = model_select(prompt=prompt, model="claude-sonnet-4-5", tools=TOOLS,
                            company_id=alice.tenant.company_id)

    claude = litellm.token_counter(model="claude-sonnet-4-5", messages=messages_for(prompt), tools=tool_specs(TOOLS))
    gpt = litellm.token_counter(model="gpt-4o", messages=messages_for(prompt), tools=tool_specs(TOOLS))
    assert claude != gpt  # the two tokenizers disagree on this prompt
    assert decision.estimated_prompt_tokens == claude + TOOL_PROMPT_TOKENS["anthropic"]


def test_the_first_call_reuses_the_routing_decisions_count_and_a_tool_round_counts_only_what_it_adds(
        alice, monkeypatch):
    import routing.runtime

    prompt = "Résumé: naïve coöperation — 東京 の 天気 は? " * 20
    decision = model_select(prompt=prompt, model="claude-sonnet-4-5", tools=TOOLS,
                            company_id=alice.tenant.company_id)
    messages = messages_for(prompt)
    router = AttemptRouter(task_id=str(uuid.uuid4()), decision=decision, budget=budget_context(
        company_id=alice.tenant.company_id, app_id=alice.tenant.app_id), base_messages=len(messages),
        tools=tool_specs(TOOLS))
    counted: list[int] = []
    real = routing.runtime.count_tokens

    def counting(model: str, **kwargs: Any) -> int:
        counted.append(len(kwargs.get("messages") or []))
        return real(model, **kwargs)

    monkeypatch.setattr(routing.runtime, "count_tokens", counting)
    spec = decision.options[0].spec
    first = asyncio.run(router._prompt_tokens(messages, spec))
    round_two = [*messages, {"role": "assistant", "content": None, "tool_calls": []},
                 {"role": "tool", "tool_call_id": "call_1", "content": "168"}]
    second = asyncio.run(router._prompt_tokens(round_two, spec))

    assert first == decision.estimated_prompt_tokens  # the decision's own count, not a second one
    assert counted == [2]  # the tool round counted its two new messages only
    assert second == first + real(spec.id, messages=round_two[len(messages):])


class FakeProvider:
    """Bills like a provider: the prompt by the model's tokenizer with the tool schemas
    (and Anthropic's tool prompt), the answer up to max_tokens. The first call fails with
    a 503 (a fallback), the next asks for a tool (a tool round), then it answers."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, deployment: Any, messages: list[dict[str, Any]], *, tools: Any = None,
                 max_tokens: int | None = None, pace: Any = None, params: Any = None) -> Any:
        self.calls.append({"model": deployment.model, "max_tokens": max_tokens, "tools": bool(tools)})
        return self._stream(deployment, messages, tools, max_tokens, len(self.calls))

    async def _stream(self, deployment: Any, messages: list[dict[str, Any]], tools: Any, max_tokens: int | None,
                      n: int) -> Any:
        if n == 1:
            raise ProviderError("provider_unavailable", "upstream 503", status=503, retryable=True)
        model = deployment.model
        prompt = litellm.token_counter(model=model, messages=messages, tools=tools)
        if tools and model.startswith("claude"):
            prompt += TOOL_PROMPT_TOKENS["anthropic"]
        answer = max_tokens or 10_000
        if n == 2:
            call = {"index": 0, "id": "call_1", "function": {"name": "code_execution", "arguments": "{}"}}
            yield Delta(tool_calls=[call], finish_reason="tool_calls")
        else:
            yield Delta(content="done", finish_reason="length")
        yield Delta(usage={"prompt_tokens": prompt, "completion_tokens": answer})


def attempt(persona: Any, decision: Any, *, prompt: str, tools: list[str], time_limit_s: float = 60.0) -> Any:
    task_id = str(uuid.uuid4())
    owner = f"1-test-{uuid.uuid4().hex[:6]}"
    events.claim(task_id, owner)
    messages = messages_for(prompt)
    specs = tool_specs(tools)
    budget = budget_context(company_id=persona.tenant.company_id, app_id=persona.tenant.app_id)
    plan = AttemptPlan(task_id=task_id, attempt=1, owner=owner, messages=messages,
                       deployment=decision.options[0].deployments[0].runtime(), start_events=[],
                       company_id=persona.tenant.company_id, tool_specs=specs, time_limit_s=time_limit_s)
    plan.router = AttemptRouter(task_id=task_id, decision=decision, budget=budget, base_messages=len(messages),
                                tools=specs)
    return plan


def test_a_budgeted_calls_cost_never_exceeds_its_reservation_with_tools_fallbacks_and_tool_rounds(
        alice, monkeypatch):
    Budget.objects.create(company_id=alice.tenant.company_id, period="month", limit_usd=Decimal("100"))
    prompt = "Use the tools to work out how many primes are below 1000, then explain the method."
    decision = model_select(prompt=prompt, model=None, tools=TOOLS, company_id=alice.tenant.company_id,
                            budgeted=True)
    provider = FakeProvider()
    monkeypatch.setattr(pipeline, "stream_chat", provider)
    plan = attempt(alice, decision, prompt=prompt, tools=TOOLS)
    reserved: list[tuple[float, float]] = []
    end_call = plan.router.end_call

    async def booking(target: Any, **kwargs: Any) -> None:
        await end_call(target, **kwargs)
        reserved.append((target.reserved_usd, plan.router.calls[-1]["cost_usd"]))

    plan.router.end_call = booking

    outcome = runtime.run(run_attempt(plan), timeout=60)

    assert outcome.status == "completed", outcome.error
    assert len(plan.router.fallbacks) == 1 and outcome.tool_rounds == 1
    assert all(c["max_tokens"] for c in provider.calls)  # every budgeted call is capped
    assert len(reserved) == 3 and all(cost > 0 for _, cost in reserved[1:])
    assert all(cost <= held for held, cost in reserved), reserved


def test_the_cap_applies_to_a_budgeted_call_even_when_the_decision_had_none(alice):
    Budget.objects.create(company_id=alice.tenant.company_id, period="month", limit_usd=Decimal("100"))
    decision = model_select(prompt="hi", model="gpt-4o-mini", tools=[], company_id=alice.tenant.company_id,
                            budgeted=False)  # routed before the budget applied
    plan = attempt(alice, decision, prompt="hi", tools=[])

    assert decision.max_tokens is None
    assert plan.router.output_cap(decision.options[0].spec) is not None


def test_waiting_for_a_rate_limit_does_not_run_the_attempt_out_of_time(alice, llm_settings, tmp_path, monkeypatch,
                                                                       settings):
    config = tmp_path / "llm.yaml"
    config.write_text("model_list:\n  - model_name: gpt-4o-mini\n"
                      "    litellm_params: {model: openai/gpt-4o-mini, api_base: http://127.0.0.1:9/v1, rpm: 60}\n"
                      "    model_info: {id: slow-mini}\n")
    settings.MAGEAGENT_ROUTING = {**settings.MAGEAGENT_ROUTING, "RATE_LIMIT_BURST_S": 1.0}
    llm_settings(LLM_API_BASE="", LLM_CONFIG=str(config))
    decision = model_select(prompt="hi", model="gpt-4o-mini", tools=[], company_id=alice.tenant.company_id)

    async def answer(*args: Any, **kwargs: Any) -> Any:
        yield Delta(content="hello", finish_reason="stop")
        yield Delta(usage={"prompt_tokens": 5, "completion_tokens": 1})

    monkeypatch.setattr(pipeline, "stream_chat", answer)
    # Another worker just took the deployment's one request a second: this call must wait
    # for the refill, longer than the attempt's whole time limit.
    plan = attempt(alice, decision, prompt="hi", tools=[], time_limit_s=0.3)
    runtime.run(rate_limit_try("slow-mini", rpm=60, tpm=None, tokens=1, burst_s=1.0))

    outcome = runtime.run(run_attempt(plan), timeout=30)

    assert outcome.status == "completed" and outcome.content == "hello"
    assert plan.router.rate_waited_s > 0


def test_a_long_prompt_is_tokenized_off_the_event_loop(alice, monkeypatch):
    import threading

    from routing import runtime as routing_runtime

    prompt = "Summarise this report. " + "The quarterly figures rose again. " * 1000
    decision = model_select(prompt=prompt, model=None, tools=[], company_id=alice.tenant.company_id)
    monkeypatch.setattr(pipeline, "stream_chat", FakeProvider())
    counted_on: list[str] = []
    count = routing_runtime.count_tokens

    def recording(*args, **kwargs):
        counted_on.append(threading.current_thread().name)
        return count(*args, **kwargs)

    monkeypatch.setattr(routing_runtime, "count_tokens", recording)

    outcome = runtime.run(run_attempt(attempt(alice, decision, prompt=prompt, tools=[])), timeout=60)

    assert outcome.status == "completed", outcome.error
    assert counted_on and "mageagent-loop" not in counted_on
