"""The routing policy: hard constraints first, then the task's characteristics."""

from __future__ import annotations

import asyncio
import json

import litellm
import pytest
from django.conf import settings

from providers.llm import ProviderError
from routing.deployments import registry
from routing.models import CompanyRoutingPolicy, Model
from routing.services import model_select

pytestmark = pytest.mark.django_db

SIMPLE = "What is the capital of Australia?"
MODERATE = "Write a polite email to my landlord asking to fix a leaking kitchen tap this week."
COMPLEX = ("Design a URL shortener that handles 10,000 writes per second. Cover the data model, ID generation, "
           "caching, replication, failure handling and sharding as it grows to 50 billion links.")


def tier_of(model_id: str) -> int:
    return Model.objects.get(id=model_id).tier


def test_a_simple_prompt_goes_to_a_cheap_economy_model():
    decision = model_select(prompt=SIMPLE, model=None, tools=[])

    assert decision.model == "gpt-4o-mini" and tier_of(decision.model) == 1
    assert decision.characteristics == ["simple"]
    assert "simple prompt" in decision.reason and "economy" in decision.reason


def test_a_moderate_prompt_gets_the_balanced_default():
    decision = model_select(prompt=MODERATE, model=None, tools=[])

    assert decision.model == "gpt-4.1-mini" and decision.tier == 2
    assert decision.characteristics == ["moderate"]


def test_a_complex_prompt_goes_to_a_strong_premium_model():
    decision = model_select(prompt=COMPLEX, model=None, tools=[])

    assert decision.model == "gpt-4.1" and decision.tier == 3
    assert decision.complexity["label"] == "complex" and decision.complexity["score"] > 0.66


def test_the_cheaper_tier_costs_less_for_the_same_prompt():
    simple = model_select(prompt=SIMPLE, model=None, tools=[])
    forced = model_select(prompt=SIMPLE, model="gpt-4.1", tools=[])

    assert simple.estimated_prompt_tokens == forced.estimated_prompt_tokens
    assert simple.estimated_cost_usd < forced.estimated_cost_usd / 5


def test_tools_need_a_tool_capable_model_of_at_least_the_balanced_tier():
    Model.objects.filter(id="gpt-4.1-mini").update(supports_tools_override=False)

    decision = model_select(prompt=SIMPLE, model=None, tools=["web_search"])

    assert "tools" in decision.characteristics
    assert decision.model == "claude-haiku-4-5"  # the next tool model the policy prefers
    for model_id in decision.candidates:
        model = Model.objects.get(id=model_id)
        assert (model.supports_tools_override if model.supports_tools_override is not None
                else model.supports_tools)
        assert model.tier >= 2


def test_a_long_prompt_only_goes_to_models_whose_window_holds_it_and_the_answer():
    long_prompt = "Summarize the following notes.\n\n" + "The quarterly numbers were reviewed again. " * 20_000

    decision = model_select(prompt=long_prompt, model=None, tools=[])

    assert decision.estimated_prompt_tokens > 128_000
    assert "long_context" in decision.characteristics
    for model_id in decision.candidates:
        window = Model.objects.get(id=model_id).context_window
        assert window >= decision.estimated_prompt_tokens + decision.estimated_output_tokens
    assert decision.model == "gemini/gemini-2.5-flash"  # the policy's long-context preference


def test_the_context_window_is_a_hard_constraint_for_the_preferred_model():
    Model.objects.filter(id="gpt-4o-mini").update(context_window_override=200)

    decision = model_select(prompt=SIMPLE, model=None, tools=[])

    assert decision.model != "gpt-4o-mini" and "gpt-4o-mini" not in decision.candidates


def test_disabled_models_and_models_not_auto_routed_are_never_chosen():
    Model.objects.filter(id="gpt-4o-mini").update(enabled=False)
    Model.objects.filter(id="gemini/gemini-2.5-flash-lite").update(auto_route=False)

    decision = model_select(prompt=SIMPLE, model=None, tools=[])

    assert not {"gpt-4o-mini", "gemini/gemini-2.5-flash-lite"} & set(decision.candidates)
    assert decision.model == "command-r7b-12-2024"


def test_the_company_allowlist_limits_the_candidates(alice, charlie):
    CompanyRoutingPolicy.objects.create(company_id=alice.tenant.company_id,
                                        allowed_models=["claude-*", "anthropic/*"])

    acme = model_select(prompt=COMPLEX, model=None, tools=[], company_id=alice.tenant.company_id)
    globex = model_select(prompt=COMPLEX, model=None, tools=[], company_id=charlie.tenant.company_id)

    assert acme.candidates and all(m.startswith("claude-") for m in acme.candidates)
    assert acme.model == "claude-sonnet-4-5"
    assert globex.model == "gpt-4.1"


def test_a_company_policy_can_prefer_other_models_and_lean_to_stronger_tiers(alice):
    CompanyRoutingPolicy.objects.create(company_id=alice.tenant.company_id, policy={
        "prefer": {"moderate": ["claude-haiku-4-5"]}, "tiers": {"simple": 2}})

    moderate = model_select(prompt=MODERATE, model=None, tools=[], company_id=alice.tenant.company_id)
    simple = model_select(prompt=SIMPLE, model=None, tools=[], company_id=alice.tenant.company_id)

    assert moderate.model == "claude-haiku-4-5"
    assert simple.tier == 2


def test_the_settings_policy_is_the_default(policy):
    policy(prefer={**settings.MAGEAGENT_ROUTING["POLICY"]["prefer"], "complex": ["claude-opus-4-5"]})

    assert model_select(prompt=COMPLEX, model=None, tools=[]).model == "claude-opus-4-5"


def test_fallback_candidates_are_on_other_providers():
    decision = model_select(prompt=COMPLEX, model=None, tools=[])

    providers = [Model.objects.get(id=m).provider for m in decision.candidates]
    assert len(decision.candidates) == settings.MAGEAGENT_ROUTING["POLICY"]["max_candidates"]
    assert len(set(providers)) == len(providers)


def test_an_explicit_model_is_used_and_falls_back_only_when_the_policy_says_so(alice):
    plain = model_select(prompt=COMPLEX, model="gpt-4o-mini", tools=[])
    CompanyRoutingPolicy.objects.create(company_id=alice.tenant.company_id, policy={"explicit_fallbacks": True})
    with_fallbacks = model_select(prompt=COMPLEX, model="gpt-4o-mini", tools=[], company_id=alice.tenant.company_id)

    assert (plain.model, plain.candidates, plain.reason) == ("gpt-4o-mini", ["gpt-4o-mini"], "requested explicitly")
    assert with_fallbacks.model == "gpt-4o-mini" and len(with_fallbacks.candidates) > 1
    assert len({Model.objects.get(id=m).provider for m in with_fallbacks.candidates}) > 1


def test_a_model_whose_deployments_are_cooling_down_is_skipped(llm_settings):
    llm_settings(LLM_API_BASE="http://127.0.0.1:9/v1")
    reg = registry()
    (deployment,) = reg.deployments("gpt-4o-mini", "openai")

    async def fail() -> bool:
        return reg.report_failure(deployment, ProviderError("provider_unavailable", "down", status=503,
                                                            retryable=True))

    assert asyncio.run(fail()) is True
    decision = model_select(prompt=SIMPLE, model=None, tools=[])

    assert decision.model == "gemini/gemini-2.5-flash-lite" and "gpt-4o-mini" not in decision.candidates
    assert "cooling down" in decision.reason


def test_only_deployable_models_are_candidates(llm_settings, tmp_path):
    config = tmp_path / "llm.yaml"
    config.write_text("model_list:\n"
                      "  - model_name: claude-haiku-4-5\n"
                      "    litellm_params: {model: anthropic/claude-haiku-4-5, api_key: os.environ/NO_SUCH_KEY}\n"
                      "  - model_name: gpt-4.1\n"
                      "    litellm_params: {model: openai/gpt-4.1, api_base: 'http://127.0.0.1:9/v1'}\n")
    llm_settings(LLM_CONFIG=str(config))

    simple = model_select(prompt=SIMPLE, model=None, tools=[])
    complex_ = model_select(prompt=COMPLEX, model=None, tools=[])

    assert set(simple.candidates) <= {"claude-haiku-4-5", "gpt-4.1"}
    assert simple.model == "claude-haiku-4-5"  # no economy model is deployed: the next tier up
    assert complex_.model == "gpt-4.1"


def test_the_gateway_override_serves_every_model_under_its_own_name(llm_settings):
    llm_settings(LLM_API_BASE="http://gateway.local/v1", LLM_API_KEY="k")

    decision = model_select(prompt=COMPLEX, model="claude-sonnet-4-5", tools=[])

    assert decision.deployment is not None
    assert (decision.deployment.api_base, decision.deployment.model, decision.deployment.openai_compatible) == (
        "http://gateway.local/v1", "claude-sonnet-4-5", True)


def test_estimates_use_the_tokenizer_and_the_catalog_price():
    decision = model_select(prompt=SIMPLE, model="gpt-4o", tools=[])

    messages = [{"role": "system", "content": settings.MAGEAGENT["SYSTEM_PROMPT"]},
                {"role": "user", "content": SIMPLE}]
    assert decision.estimated_prompt_tokens == litellm.token_counter(model="gpt-4o", messages=messages)
    expected = decision.estimated_prompt_tokens * 2.5e-6 + decision.estimated_output_tokens * 10e-6
    assert decision.estimated_cost_usd == pytest.approx(expected)
    assert decision.estimated_tokens == decision.estimated_prompt_tokens + decision.estimated_output_tokens


def test_route_is_a_dry_run_returning_the_decision(api, alice):
    from tasks.models import Task

    response = api.post("/mageagent/api/v1/route", {"prompt": COMPLEX, "tools": []}, format="json",
                        HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 200
    decision = response.json()
    assert decision["model"] == "gpt-4.1" and decision["provider"] == "openai"
    assert decision["candidates"][0] == "gpt-4.1" and decision["estimated_cost_usd"] > 0
    assert isinstance(decision["estimated_tokens"], int) and "premium" in decision["reason"]
    assert Task.objects.count() == 0
    json.dumps(decision)
