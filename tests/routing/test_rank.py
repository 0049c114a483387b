"""The routing rank over a pool's columns orders exactly as its plain definition: the same
key per model, compared as one tuple. Random pools with many ties (windows, tiers, prices)
exercise every tie-breaker, and a policy's company overrides merge once, not per task."""

from __future__ import annotations

import heapq
import random

import pytest
from django.conf import settings

from routing.selectors import ModelSpec, policy_for
from routing.services import RESELLER_PROVIDERS, _larger, _Pool, _rank

PROVIDERS = ["openai", "anthropic", "gemini", "openrouter", "together_ai", "mistral"]


def spec(rng: random.Random, n: int) -> ModelSpec:
    return ModelSpec(id=f"m{n}", provider=rng.choice(PROVIDERS), context_window=rng.choice([8_000, 32_000, 128_000]),
                     max_output_tokens=rng.choice([1_000, 4_096, 16_384]),
                     input_cost_per_token=rng.choice([0.0, 1e-7, 5e-7, 3e-6]),
                     output_cost_per_token=rng.choice([0.0, 4e-7, 2e-6, 1.5e-5]), supports_tools=True,
                     supports_vision=False, supports_json=False, tier=rng.choice([None, 1, 2, 3]), enabled=True,
                     auto_route=True)


def plain_rank(pool, *, need, prefer, prompt_tokens, output_tokens, cap):
    def key(s):
        tier = s.tier or 0
        band = 0 if tier == need else 1 if tier > need else 2 + (need - tier)
        out = min(cap, s.max_output_tokens) if cap else output_tokens
        cost = prompt_tokens * s.input_cost_per_token + out * s.output_cost_per_token
        return band, prefer.get(s.id, len(prefer)), cost, s.provider in RESELLER_PROVIDERS

    return sorted((s for s in pool if s.context_window >= prompt_tokens + output_tokens), key=key)


def plain_larger(pool, *, than, need, prompt_tokens, output_tokens, cap, n=3):
    least = max(than.context_window + 1, prompt_tokens + output_tokens)
    keyed = [(s.context_window, prompt_tokens * s.input_cost_per_token
              + (min(cap, s.max_output_tokens) if cap else output_tokens) * s.output_cost_per_token, i)
             for i, s in enumerate(pool) if s.context_window >= least and (s.tier or 0) >= need]
    return [pool[i] for _, _, i in heapq.nsmallest(n, keyed)]


@pytest.mark.parametrize("seed", range(40))
def test_the_rank_and_the_larger_windows_match_their_plain_definitions(seed):
    rng = random.Random(seed)
    pool = [spec(rng, n) for n in range(rng.choice([0, 1, 5, 60, 460]))]
    columns = _Pool(pool)
    for _ in range(10):
        prefer = {f"m{n}": rank for rank, n in enumerate(rng.sample(range(80), rng.choice([0, 0, 2, 5])))}
        args = {"need": rng.choice([1, 2, 3]), "prompt_tokens": rng.choice([10, 900, 20_000, 40_000]),
                "output_tokens": rng.choice([200, 1_000, 4_000]), "cap": rng.choice([None, None, 2_000])}
        assert _rank(columns, prefer=prefer, **args) == plain_rank(pool, prefer=prefer, **args)
        if pool:
            than = rng.choice(pool)
            assert _larger(columns, than=than, **args) == plain_larger(pool, than=than, **args)


@pytest.mark.django_db
def test_a_companys_policy_is_merged_once_and_again_after_its_row_changes(alice):
    from routing.models import CompanyRoutingPolicy

    company = alice.tenant.company_id
    first = policy_for(company)
    assert policy_for(company) is first  # no deep copy per task

    CompanyRoutingPolicy.objects.create(company_id=company, policy={"max_candidates": 2})
    changed = policy_for(company)
    assert changed is not first and changed["max_candidates"] == 2
    assert policy_for(None)["max_candidates"] == settings.MAGEAGENT_ROUTING["POLICY"]["max_candidates"] != 2
