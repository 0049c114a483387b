from __future__ import annotations

import pytest
from django.core.management import call_command

from routing.catalog import catalog_refresh
from routing.models import CompanyRoutingPolicy, Model

pytestmark = pytest.mark.django_db

MODELS = "/mageagent/api/v1/models"


def test_a_migrated_database_has_over_320_chat_models_from_at_least_5_providers():
    assert Model.objects.count() >= 320
    providers = set(Model.objects.values_list("provider", flat=True))
    assert {"openai", "anthropic", "gemini", "cohere_chat", "mistral"} <= providers
    gpt = Model.objects.get(id="gpt-4o-mini")
    assert (gpt.provider, gpt.context_window, gpt.supports_tools) == ("openai", 128_000, True)
    assert gpt.input_cost_per_token == pytest.approx(0.15e-6) and gpt.output_cost_per_token == pytest.approx(0.6e-6)


def test_every_model_has_a_tier_from_its_family_or_price():
    tiers = dict(Model.objects.filter(id__in=["gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1", "claude-haiku-4-5",
                                             "claude-opus-4-5", "gemini/gemini-2.5-flash-lite",
                                             "gemini/gemini-2.5-pro"]).values_list("id", "default_tier"))
    assert tiers == {"gpt-4o-mini": 1, "gemini/gemini-2.5-flash-lite": 1, "gpt-4.1-mini": 2, "claude-haiku-4-5": 2,
                     "gpt-4.1": 3, "claude-opus-4-5": 3, "gemini/gemini-2.5-pro": 3}


def test_refreshing_from_litellm_keeps_what_staff_changed():
    Model.objects.filter(id="gpt-4o").update(enabled=False, quality_tier=2, input_cost_override=1e-6,
                                             supports_tools_override=False, context_window=5)
    Model.objects.filter(id="gpt-4o-mini").delete()
    Model.objects.create(id="gone-model", provider="openai", notes="litellm never had it")

    counts = catalog_refresh()

    gpt = Model.objects.get(id="gpt-4o")
    assert (gpt.enabled, gpt.quality_tier, gpt.input_cost_override, gpt.supports_tools_override) == (
        False, 2, 1e-6, False)
    assert gpt.context_window == 128_000  # litellm's own column is refreshed
    assert Model.objects.filter(id="gpt-4o-mini").exists()
    assert Model.objects.get(id="gone-model").in_source is False
    assert counts["created"] == 1 and counts["dropped_by_source"] == 1


def test_the_refresh_command_reports_what_it_did(capsys):
    Model.objects.filter(id="gpt-4.1").delete()

    call_command("routing_refresh_catalog")

    assert Model.objects.filter(id="gpt-4.1").exists()
    assert "created 1" in capsys.readouterr().out


def test_models_lists_the_catalog_with_prices_per_million_tokens(api, alice):
    response = api.get(MODELS, HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 200
    models = {m["id"]: m for m in response.json()["results"]}
    assert len(models) >= 320
    assert models["gpt-4o-mini"] | {"input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.6} == models["gpt-4o-mini"]
    assert {"id", "provider", "context_window", "input_cost_per_mtok", "output_cost_per_mtok", "supports_tools",
            "enabled"} <= set(models["gpt-4o-mini"])


def test_models_shows_only_what_the_callers_company_may_use(api, alice, charlie):
    CompanyRoutingPolicy.objects.create(company_id=alice.tenant.company_id, allowed_models=["gpt-4o*", "anthropic/*",
                                                                                           "claude-*"],
                                        blocked_models=["gpt-4o-2024-*"])
    Model.objects.filter(id="claude-opus-4-5").update(enabled=False)

    acme = {m["id"] for m in api.get(MODELS, HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()["results"]}
    globex = {m["id"] for m in api.get(MODELS, HTTP_AUTHORIZATION=f"Bearer {charlie.key}").json()["results"]}

    assert "gpt-4o-mini" in acme and "claude-sonnet-4-5" in acme
    assert not acme & {"gpt-4.1", "gemini/gemini-2.5-pro", "gpt-4o-2024-08-06", "claude-opus-4-5"}
    assert {"gpt-4.1", "gemini/gemini-2.5-pro"} <= globex and "claude-opus-4-5" not in globex


@pytest.mark.parametrize("path", ["/mageagent/api/v1/tasks", "/mageagent/api/v1/route"])
def test_an_unknown_disabled_or_forbidden_model_is_a_400(api, alice, path):
    Model.objects.filter(id="gpt-4o").update(enabled=False)
    CompanyRoutingPolicy.objects.create(company_id=alice.tenant.company_id, blocked_models=["claude-*"])

    for model in ("no-such-model", "gpt-4o", "claude-sonnet-4-5"):
        response = api.post(path, {"prompt": "hi", "model": model}, format="json",
                            HTTP_AUTHORIZATION=f"Bearer {alice.key}")
        assert response.status_code == 400, model
        assert response.json()["error"]["code"] == "validation_error"


def test_a_model_may_be_named_with_its_provider_prefix(api, alice):
    response = api.post("/mageagent/api/v1/route", {"prompt": "hi", "model": "openai/gpt-4o-mini"}, format="json",
                        HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert response.status_code == 200
    assert (response.json()["model"], response.json()["provider"]) == ("gpt-4o-mini", "openai")


def test_the_catalog_has_openrouter_among_at_least_5_providers_of_320_chat_models():
    providers = set(Model.objects.values_list("provider", flat=True))

    assert Model.objects.count() >= 320 and len(providers) >= 5 and "openrouter" in providers
    sonnet = Model.objects.get(id="openrouter/anthropic/claude-sonnet-4.5")
    first_party = Model.objects.get(id="claude-sonnet-4-5")
    assert (sonnet.provider, sonnet.supports_tools, sonnet.default_tier) == ("openrouter", True, 3)
    assert (sonnet.input_cost_per_token, sonnet.context_window) == (first_party.input_cost_per_token,
                                                                   first_party.context_window)


def test_refreshing_one_provider_leaves_the_others_in_source():
    Model.objects.create(id="openai-only-here", provider="openai")

    counts = catalog_refresh(providers=["anthropic"])

    assert Model.objects.get(id="openai-only-here").in_source is True
    assert Model.objects.get(id="gpt-4o").in_source is True
    assert counts["dropped_by_source"] == 0


def test_the_refresh_command_for_one_provider_touches_only_that_provider(capsys):
    call_command("routing_refresh_catalog", "--provider", "openrouter")

    assert not Model.objects.filter(in_source=False).exists()
    assert "0 no longer in litellm's map" in capsys.readouterr().out


def test_the_savings_report_by_default_compares_with_the_premium_pick_and_the_strongest_model(capsys):
    call_command("routing_savings_report", "--no-cv")

    out = capsys.readouterr().out
    assert "| always `gpt-4.1` |" in out and "| always `gpt-4` |" in out
    assert "strongest model by price" in out
