"""Which sampling parameters a call sends: all of them to an OpenAI-compatible endpoint,
those litellm maps for the provider otherwise (the rest are dropped with a note)."""

from __future__ import annotations

from providers.llm import Deployment, request_body
from tasks.runtime.pipeline import AttemptPlan, _supported

PARAMS = {"temperature": 0.2, "seed": 7, "response_format": {"type": "json_object"}}


def plan(deployment: Deployment) -> AttemptPlan:
    return AttemptPlan(task_id="t", attempt=1, owner="o", messages=[], deployment=deployment, start_events=[],
                       params=dict(PARAMS))


def test_an_openai_compatible_endpoint_gets_every_parameter():
    gateway = Deployment(model="gpt-4o-mini", provider="openai", litellm_model="openai/gpt-4o-mini",
                         openai_compatible=True)

    assert _supported(plan(gateway), gateway, False) == PARAMS


def test_a_provider_without_seed_gets_the_others():
    claude = Deployment(model="claude-sonnet-4-5", provider="anthropic", litellm_model="anthropic/claude-sonnet-4-5")

    assert _supported(plan(claude), claude, False) == {"temperature": 0.2, "response_format": {"type": "json_object"}}


def test_cohere_takes_json_mode_unless_the_call_has_tools():
    cohere = Deployment(model="command-r7b-12-2024", provider="cohere_chat",
                        litellm_model="cohere_chat/command-r7b-12-2024")

    assert _supported(plan(cohere), cohere, False) == PARAMS
    # Cohere refuses response_format together with tools: left out, and noted as dropped.
    assert _supported(plan(cohere), cohere, True) == {"temperature": 0.2, "seed": 7}


def test_the_request_body_carries_the_parameters_and_no_tool_choice_without_tools():
    gateway = Deployment(model="m", provider="openai", litellm_model="openai/m", openai_compatible=True)

    body = request_body(gateway, [{"role": "user", "content": "hi"}], None, 50, {**PARAMS, "tool_choice": "auto"})

    assert {k: body[k] for k in PARAMS} == PARAMS and body["max_tokens"] == 50 and "tool_choice" not in body
