"""Which model runs a task: validation of a requested model, and the routing policy.

Auto-routing filters the catalog by hard constraints (enabled and auto-routable, allowed
for the company, context window >= prompt + context + expected answer, tool support
when tools are requested, deployable, not cooling down), then ranks what is left by the
task's characteristics: the tier its complexity needs (simple -> economy, moderate ->
balanced, complex -> premium, tools -> at least balanced), the policy's preferred models
for those characteristics, then estimated cost. The ranked list's head runs the task;
the rest (spread over providers) are its fallbacks.
"""

from __future__ import annotations

import bisect
import heapq
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from mageagent.errors import ValidationFailed
from providers.conversation import conversation_messages, has_images
from providers.llm import Deployment
from tools.registry import tool_specs

from .complexity import LABELS, complexity_estimate
from .deployments import DeploymentSpec, registry
from .pricing import FALLBACK_TOKENIZER_MODEL, count_tokens, request_tokens, tokenizer_model
from .selectors import ModelSpec, model_allowed, model_get, models_all, policy_for

TIER_NAMES = {1: "economy", 2: "balanced", 3: "premium"}
# Providers that resell other makers' models (same model, same price): a model's own
# provider ranks before them at equal price.
RESELLER_PROVIDERS = frozenset({"openrouter", "deepinfra", "together_ai"})


@dataclass
class Candidate:
    spec: ModelSpec
    deployments: list[DeploymentSpec]
    estimated_cost_usd: float


@dataclass
class RoutingDecision:
    model: str
    provider: str
    reason: str
    candidates: list[str] = field(default_factory=list)
    deployment: Deployment | None = None
    estimated_tokens: int = 0
    estimated_prompt_tokens: int = 0
    estimated_output_tokens: int = 0
    estimated_cost_usd: float = 0.0
    tier: int | None = None
    characteristics: list[str] = field(default_factory=list)
    complexity: dict[str, Any] | None = None
    max_tokens: int | None = None  # the answer's cap (budgeted tasks: what bounds their cost)
    options: list[Candidate] = field(default_factory=list, repr=False)
    larger: list[Candidate] = field(default_factory=list, repr=False)
    # Raw token counts of the prompt (messages + tool schemas) per tokenizer: the first
    # call of the attempt sends these messages, so its router need not count them again.
    prompt_counts: dict[str, int] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "provider": self.provider, "reason": self.reason,
                "candidates": list(self.candidates), "estimated_tokens": self.estimated_tokens,
                "estimated_prompt_tokens": self.estimated_prompt_tokens,
                "estimated_output_tokens": self.estimated_output_tokens,
                "estimated_cost_usd": round(self.estimated_cost_usd, 8), "tier": self.tier,
                "characteristics": list(self.characteristics), "complexity": self.complexity,
                "max_tokens": self.max_tokens}


def model_validate(*, tenant: Any, model: str | None, images: bool = False) -> None:
    """A requested model exists, is enabled and allowed, and takes images when the
    conversation has some."""
    if not model:
        return
    spec = model_get(model)
    if spec is None:
        raise ValidationFailed(f"unknown model {model!r}; GET /models lists the catalog", details={"model": model})
    if not spec.enabled:
        raise ValidationFailed(f"model {model!r} is disabled", details={"model": model})
    if not model_allowed(getattr(tenant, "company_id", None), spec.id):
        raise ValidationFailed(f"model {model!r} is not allowed for this company", details={"model": model})
    if images and not spec.supports_vision:
        raise ValidationFailed(f"model {model!r} does not take images; choose a vision model or auto",
                               details={"model": model})


def _tool_schemas(tools: list[str]) -> list[dict[str, Any]] | None:
    """The JSON schemas the calls will carry: sent on every call, billed as prompt tokens."""
    if not tools:
        return None
    return tool_specs(tools) or None


def _unknown_spec(model: str) -> ModelSpec:
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    return ModelSpec(id=model, provider=provider, context_window=128_000, max_output_tokens=4096,
                     input_cost_per_token=0.0, output_cost_per_token=0.0, supports_tools=True, supports_vision=False,
                     supports_json=False, tier=None, enabled=True, auto_route=False)


def model_select(*, prompt: str, model: str | None, tools: list[str], context_text: str = "",
                 company_id: int | None = None, budgeted: bool = False,
                 messages: list[dict[str, Any]] | None = None, system: str | None = None,
                 max_tokens: int | None = None, client_tools: list[dict[str, Any]] | None = None) -> RoutingDecision:
    """Route a task. The whole conversation counts (`messages`, `system`, context and the
    tool schemas, the client's functions too); `max_tokens` bounds the expected answer."""
    policy = policy_for(company_id)
    reg = registry()
    messages = conversation_messages(prompt=prompt, messages=messages, system=system, context_text=context_text)
    schemas = [*(_tool_schemas(tools) or []), *(client_tools or [])] or None
    tools = [*tools, *(t["function"]["name"] for t in client_tools or ())]
    counted = count_tokens(FALLBACK_TOKENIZER_MODEL, messages=messages, tools=schemas)
    prompt_counts = {tokenizer_model(FALLBACK_TOKENIZER_MODEL): counted}
    prompt_tokens = counted
    bias = [float(policy["complexity_bias"].get(label, 0.0)) for label in LABELS]
    complexity = complexity_estimate(prompt, bias=bias)
    output_tokens = int(policy["expected_output_tokens"][complexity.label])
    cap = settings.MAGEAGENT_ROUTING["BUDGET_MAX_OUTPUT_TOKENS"] if budgeted else None
    if max_tokens:
        output_tokens = min(output_tokens, max_tokens)
        cap = min(cap, max_tokens) if cap else max_tokens
    long_context = prompt_tokens >= int(policy["long_context_tokens"])
    traits = [complexity.label] + (["tools"] if tools else []) + (["long_context"] if long_context else [])
    need = max(int(policy["tiers"][complexity.label]), int(policy["tools_min_tier"]) if tools else 0)

    def cost(spec: ModelSpec) -> float:
        return spec.cost_usd(prompt_tokens, min(cap, spec.max_output_tokens) if cap else output_tokens)

    def candidate(spec: ModelSpec) -> Candidate:
        return Candidate(spec, reg.deployments(spec.id, spec.provider), cost(spec))

    def room(spec: ModelSpec) -> bool:
        return spec.context_window >= prompt_tokens + output_tokens

    def fits(spec: ModelSpec) -> bool:
        return room(spec) and _usable(spec, company_id, bool(tools), reg)

    if model:
        spec = model_get(model) or _unknown_spec(model)
        others = [s for s in models_all().values() if s.id != spec.id and s.auto_route and fits(s)
                  and (s.tier or 0) >= (spec.tier or 0)] if policy["explicit_fallbacks"] else []
        ranked = [spec, *sorted(others, key=lambda s: (s.tier != spec.tier, cost(s)))]
        reason = "requested explicitly"
        need = spec.tier or need
    else:
        prefer = _preferences(policy, complexity.label, bool(tools), long_context)
        ranked = _rank(_routable(company_id, bool(tools), reg), need=need, prefer=prefer,
                       prompt_tokens=prompt_tokens, output_tokens=output_tokens, cap=cap)
        if has_images(messages):
            ranked = [s for s in ranked if s.supports_vision]
            traits.append("vision")
        if not ranked:  # nothing fits: the default model beats no answer
            default = settings.MAGEAGENT["DEFAULT_MODEL"]
            ranked = [model_get(default) or _unknown_spec(default)]
        reason = _reason(complexity, need, traits, prompt_tokens, ranked[0], prefer)
    chosen, skipped = _without_cooling(reg, ranked, limit=3 * int(policy["max_candidates"]))
    if skipped:
        reason += f"; skipped {skipped} cooling down"
    options = [candidate(s) for s in _spread(chosen, int(policy["max_candidates"]))]
    if model and not policy["explicit_fallbacks"]:
        options = options[:1]
    head = options[0]
    # The constraints above were checked with one count; the chosen model's estimate uses
    # its own tokenizer (when litellm has it locally) and its provider's tool prompt.
    if tokenizer_model(head.spec.id) not in prompt_counts:
        counted = prompt_counts[tokenizer_model(head.spec.id)] = count_tokens(head.spec.id, messages=messages,
                                                                              tools=schemas)
    prompt_tokens = request_tokens(head.spec.provider, counted, tools=bool(schemas))
    head = options[0] = Candidate(head.spec, head.deployments, cost(head.spec))
    larger = [candidate(s) for s in _larger(_routable(company_id, bool(tools), reg), than=head.spec, need=need,
                                            prompt_tokens=prompt_tokens, output_tokens=output_tokens, cap=cap)]
    out = min(cap, head.spec.max_output_tokens) if cap else output_tokens
    return RoutingDecision(
        model=head.spec.id, provider=head.spec.provider, reason=reason, candidates=[c.spec.id for c in options],
        deployment=head.deployments[0].runtime() if head.deployments else None,
        estimated_tokens=prompt_tokens + out, estimated_prompt_tokens=prompt_tokens, estimated_output_tokens=out,
        estimated_cost_usd=head.estimated_cost_usd, tier=head.spec.tier, characteristics=traits,
        complexity={"label": complexity.label, "score": complexity.score}, max_tokens=cap and out,
        options=options, larger=larger, prompt_counts=prompt_counts)


class _Pool:
    """The models automatic routing may pick, as columns: built once per company and tool
    need (cached by _routable for CATALOG_CACHE_S), so that ranking for each task reads
    them with list comprehensions and zip, not attribute by attribute."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self.specs = specs
        self.ids = [s.id for s in specs]
        self.windows = [s.context_window for s in specs]
        self.min_window = min(self.windows, default=0)
        self.tiers = [s.tier or 0 for s in specs]
        self.ins = [s.input_cost_per_token for s in specs]
        self.outs = [s.output_cost_per_token for s in specs]
        self.max_outs = [s.max_output_tokens for s in specs]
        self.resellers = [s.provider in RESELLER_PROVIDERS for s in specs]
        # (window, index), ascending: the models above a window are a slice of it.
        self.by_window = sorted((w, i) for i, w in enumerate(self.windows))
        self.index = {model_id: i for i, model_id in enumerate(self.ids)}
        self._bands: dict[int, list[int]] = {}
        self._unpreferred: dict[tuple[int, int], list[int]] = {}

    def bands(self, need: int) -> list[int]:
        """0 at the needed tier, 1 above it, 2 + the distance below it."""
        bands = self._bands.get(need)
        if bands is None:
            bands = self._bands[need] = [0 if t == need else 1 if t > need else 2 + (need - t) for t in self.tiers]
        return bands

    def unpreferred(self, need: int, preferred: int) -> list[int]:
        """The rank group of each model that none of `preferred` preferences names."""
        groups = self._unpreferred.get((need, preferred))
        if groups is None:
            groups = self._unpreferred[(need, preferred)] = [b * (preferred + 1) + preferred
                                                             for b in self.bands(need)]
        return groups

    def costs(self, prompt_tokens: int, output_tokens: int, cap: int | None,
              only: list[int] | None = None) -> list[float]:
        """Each model's estimated cost (of the models at `only`, when given)."""
        rows = range(len(self.specs)) if only is None else only
        ins, outs = self.ins, self.outs
        if cap:
            max_outs = self.max_outs
            return [prompt_tokens * ins[i] + min(cap, max_outs[i]) * outs[i] for i in rows]
        if only is None:
            return [prompt_tokens * i + output_tokens * o for i, o in zip(ins, outs, strict=True)]
        return [prompt_tokens * ins[i] + output_tokens * outs[i] for i in rows]


def _rank(pool: _Pool, *, need: int, prefer: dict[str, int], prompt_tokens: int, output_tokens: int,
          cap: int | None) -> list[ModelSpec]:
    """The pool's models with room for the prompt, in routing order: the needed tier first
    (then higher, then lower), the policy's preferences, the estimated cost, resellers
    last, then the pool's order. It runs for every task over the whole routable pool
    (hundreds of models), so it reads the pool's columns and sorts indices by one key at a
    time, which costs a fraction of a loop building a key tuple per spec."""
    costs = pool.costs(prompt_tokens, output_tokens, cap)
    bands = pool.bands(need)
    groups = bands
    if prefer:  # (band, preference) as one int, band-major: a few preferred models set theirs
        groups, step = list(pool.unpreferred(need, len(prefer))), len(prefer) + 1
        for model_id, rank in prefer.items():
            i = pool.index.get(model_id)
            if i is not None:
                groups[i] = bands[i] * step + rank
    room = prompt_tokens + output_tokens
    order = list(range(len(pool.specs)))
    if room > pool.min_window:
        windows = pool.windows
        order = [i for i in order if windows[i] >= room]
    # Stable sorts, least significant key first: each sort's keys are of one type (ints,
    # floats, bools), which list.sort compares without the generic protocol.
    order.sort(key=pool.resellers.__getitem__)
    order.sort(key=costs.__getitem__)
    order.sort(key=groups.__getitem__)
    return [pool.specs[i] for i in order]


def _larger(pool: _Pool, *, than: ModelSpec, need: int, prompt_tokens: int, output_tokens: int,
            cap: int | None, n: int = 3) -> list[ModelSpec]:
    """The next larger context windows (at the needed tier or above), cheapest first per
    window: where a context_window_exceeded error reroutes. Walks the pool by window from
    the least that helps, and stops past the n-th fit's window."""
    least = max(than.context_window + 1, prompt_tokens + output_tokens)
    tiers, found, last = pool.tiers, list[tuple[int, int]](), None
    for window, i in pool.by_window[bisect.bisect_left(pool.by_window, (least, -1)):]:
        if len(found) >= n and window != last:
            break
        if tiers[i] >= need:
            found.append((window, i))
            last = window
    costs = pool.costs(prompt_tokens, output_tokens, cap, only=[i for _, i in found])
    keyed = [(window, cost, i) for (window, i), cost in zip(found, costs, strict=True)]
    return [pool.specs[i] for _, _, i in heapq.nsmallest(n, keyed)]


def _usable(spec: ModelSpec, company_id: int | None, tools: bool, reg: Any) -> bool:
    return (spec.enabled and (spec.supports_tools or not tools) and model_allowed(company_id, spec.id)
            and bool(reg.deployments(spec.id, spec.provider)))


_routable_cache: dict[tuple[int | None, bool], tuple[float, int, _Pool]] = {}


def _routable(company_id: int | None, tools: bool, reg: Any) -> _Pool:
    """The models automatic routing may pick for a company, before the per-prompt context
    check. The same for every task of the company within CATALOG_CACHE_S, and it walks the
    whole catalog, so it is cached rather than recomputed per task."""
    catalog = models_all()
    now = time.monotonic()
    hit = _routable_cache.get((company_id, tools))
    if hit is not None and hit[0] > now and hit[1] == id(catalog) + id(reg):
        return hit[2]
    pool = _Pool([s for s in catalog.values() if s.auto_route and s.tier and _usable(s, company_id, tools, reg)])
    if len(_routable_cache) > 10_000:
        _routable_cache.clear()
    expires = now + settings.MAGEAGENT_ROUTING["CATALOG_CACHE_S"]
    _routable_cache[(company_id, tools)] = (expires, id(catalog) + id(reg), pool)
    return pool


def _preferences(policy: dict[str, Any], label: str, tools: bool, long_context: bool) -> dict[str, int]:
    lists = policy["prefer"]
    names = (lists.get("long_context", []) if long_context else []) + (lists.get("tools", []) if tools else [])
    names += lists.get(label, [])
    order: dict[str, int] = {}
    for name in names:
        spec = model_get(name)
        if spec is not None:
            order.setdefault(spec.id, len(order))
    return order


def _reason(complexity: Any, need: int, traits: list[str], prompt_tokens: int, head: ModelSpec,
            prefer: dict[str, int]) -> str:
    parts = [f"{complexity.label} prompt (complexity {complexity.score:.2f}) needs the {TIER_NAMES[need]} tier"]
    if "tools" in traits:
        parts.append("tools requested: tool-capable models only")
    if "long_context" in traits:
        parts.append(f"long context ({prompt_tokens} tokens)")
    how = "preferred by the policy" if head.id in prefer else "cheapest fitting model"
    if (head.tier or 0) < need:
        how += f", below the needed tier: no {TIER_NAMES[need]} model fits"
    return "; ".join(parts) + f"; chose {head.id} ({TIER_NAMES.get(head.tier or 0, 'untiered')}, {how})"


def _without_cooling(reg: Any, ranked: list[ModelSpec], *, limit: int) -> tuple[list[ModelSpec], int]:
    """Drop models whose every deployment is cooling down (unless that drops them all)."""
    head = ranked[:limit]
    deployments = {s.id: reg.deployments(s.id, s.provider) for s in head}
    try:
        cooling = reg.cooling([d.id for ds in deployments.values() for d in ds])
    except Exception:  # Redis trouble must not stop routing
        cooling = set()
    healthy = [s for s in head if not deployments[s.id] or any(d.id not in cooling for d in deployments[s.id])]
    if not healthy:
        return ranked, 0
    return healthy + ranked[limit:], len(head) - len(healthy)


def _spread(ranked: list[ModelSpec], limit: int) -> list[ModelSpec]:
    """The best model, then the best of each other provider, then the rest in order:
    so the first fallback is on another provider."""
    chosen = ranked[:1]
    providers = {s.provider for s in chosen}
    for spec in ranked[1:]:
        if len(chosen) >= limit:
            break
        if spec.provider not in providers:
            chosen.append(spec)
            providers.add(spec.provider)
    for spec in ranked[1:]:
        if len(chosen) >= limit:
            break
        if spec not in chosen:
            chosen.append(spec)
    return chosen[:limit]
