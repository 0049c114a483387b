"""Reads of the routing app. The catalog and company policies are read on every task,
so each process keeps them for CATALOG_CACHE_S seconds (and drops them at once when a
row changes in this process)."""

from __future__ import annotations

import copy
import fnmatch
import threading
import time
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q, Sum

from mageagent.versioned import VersionedCache

from . import catalog as catalog_module
from .catalog import catalog_ensure
from .deployments import catalog_sync_config
from .models import Budget, CompanyRoutingPolicy, Model, Spend


@dataclass(frozen=True)
class ModelSpec:
    """A catalog model with the staff overrides applied."""

    id: str
    provider: str
    context_window: int
    max_output_tokens: int
    input_cost_per_token: float
    output_cost_per_token: float
    supports_tools: bool
    supports_vision: bool
    supports_json: bool
    tier: int | None
    enabled: bool
    auto_route: bool

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_cost_per_token + completion_tokens * self.output_cost_per_token

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "provider": self.provider, "context_window": self.context_window,
                "max_output_tokens": self.max_output_tokens,
                "input_cost_per_mtok": round(self.input_cost_per_token * 1e6, 6),
                "output_cost_per_mtok": round(self.output_cost_per_token * 1e6, 6),
                "supports_tools": self.supports_tools, "supports_vision": self.supports_vision,
                "supports_json": self.supports_json, "tier": self.tier, "enabled": self.enabled}


def spec_from_row(m: Model) -> ModelSpec:
    def pick(override, value):
        return (value if override is None else override)
    return ModelSpec(
        id=m.id, provider=m.provider,
        context_window=int(pick(m.context_window_override, m.context_window) or 8192),
        max_output_tokens=int(m.max_output_tokens or 4096),
        input_cost_per_token=float(pick(m.input_cost_override, m.input_cost_per_token) or 0.0),
        output_cost_per_token=float(pick(m.output_cost_override, m.output_cost_per_token) or 0.0),
        supports_tools=bool(pick(m.supports_tools_override, m.supports_tools)),
        supports_vision=bool(pick(m.supports_vision_override, m.supports_vision)),
        supports_json=bool(pick(m.supports_json_override, m.supports_json)),
        tier=m.tier, enabled=m.enabled, auto_route=m.auto_route,
    )


class _Catalog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded_at = -1e9
        self.models: dict[str, ModelSpec] = {}
        self.aliases: dict[str, str] = {}
        self.policies: dict[int, CompanyRoutingPolicy | None] = {}
        self.refreshes = -1

    def stale(self) -> bool:
        return (time.monotonic() - self.loaded_at > settings.MAGEAGENT_ROUTING["CATALOG_CACHE_S"]
                or not self.models or self.refreshes != catalog_module.refreshes)

    def get(self) -> _Catalog:
        if self.stale():
            with self.lock:
                if self.stale():
                    self._load()
        return self

    def _load(self) -> None:
        catalog_ensure()
        catalog_sync_config()
        self.refreshes = catalog_module.refreshes  # after the refresh an empty catalog gets
        models = {m.id: spec_from_row(m) for m in Model.objects.all()}
        aliases: dict[str, str] = {}
        for model_id, spec in models.items():
            tail = model_id.rsplit("/", 1)[-1]
            aliases.setdefault(tail, model_id)
            aliases.setdefault(f"{spec.provider}/{tail}", model_id)
        self.models, self.aliases, self.policies = models, aliases, {}
        self.loaded_at = time.monotonic()

    def invalidate(self) -> None:
        self.loaded_at = -1e9


catalog = _Catalog()


def catalog_invalidate(**_: Any) -> None:
    catalog.invalidate()


# Characters per token the prompt limit allows: English prose runs about four.
CHARS_PER_TOKEN = 4


def largest_context_window() -> int:
    """The largest context window of an enabled model (what the longest prompt may fill)."""
    catalog = models_all()
    if _largest[0] is not catalog:  # once per catalog load, not per request
        _largest[:] = [catalog, max((s.context_window for s in catalog.values() if s.enabled), default=128_000)]
    return int(_largest[1])


_largest: list[Any] = [None, 0]


def max_prompt_chars() -> int:
    """The longest conversation a task may carry: MAGEAGENT_MAX_PROMPT_CHARS when set, else
    the largest enabled context window at CHARS_PER_TOKEN. Routing then picks a model by the
    counted tokens."""
    return int(settings.MAGEAGENT["MAX_PROMPT_CHARS"]) or largest_context_window() * CHARS_PER_TOKEN


def max_prompt_body_bytes() -> int:
    """A JSON body with room for the longest prompt: two bytes a character (JSON escapes,
    non-ASCII text) and a megabyte for the rest of the request."""
    return 2 * max_prompt_chars() + 1024 * 1024


def model_get(name: str) -> ModelSpec | None:
    """A catalog model by id, or by the name a caller may use for it
    ('openai/gpt-4o' for 'gpt-4o', 'gemini-2.5-pro' for 'gemini/gemini-2.5-pro')."""
    cat = catalog.get()
    spec = cat.models.get(name)
    if spec is None and name in cat.aliases:
        spec = cat.models.get(cat.aliases[name])
    if spec is None and "/" in name:
        spec = cat.models.get(name.split("/", 1)[1])
    return spec


def models_all() -> dict[str, ModelSpec]:
    return catalog.get().models


def company_policy(company_id: int | None) -> CompanyRoutingPolicy | None:
    if company_id is None:
        return None
    cat = catalog.get()
    if company_id not in cat.policies:
        cat.policies[company_id] = CompanyRoutingPolicy.objects.filter(company_id=company_id).first()
    return cat.policies[company_id]


_policies: dict[int | None, tuple[Any, Any, dict[str, Any]]] = {}


def policy_for(company_id: int | None) -> dict[str, Any]:
    """The settings policy with the company's overrides merged in (dicts merge per key).
    Read it, do not change it: it is merged once per company policy row (the catalog's,
    which a save replaces) and settings policy, not deep-copied for every task."""
    base, row = settings.MAGEAGENT_ROUTING["POLICY"], company_policy(company_id)
    hit = _policies.get(company_id)
    if hit is not None and hit[0] is base and hit[1] is row:
        return hit[2]
    policy = copy.deepcopy(base)
    for key, value in ((row.policy or {}) if row else {}).items():
        if isinstance(value, dict) and isinstance(policy.get(key), dict):
            policy[key].update(value)
        else:
            policy[key] = value
    if len(_policies) > 10_000:
        _policies.clear()
    _policies[company_id] = (base, row, policy)
    return policy


def model_allowed(company_id: int | None, model_id: str) -> bool:
    row = company_policy(company_id)
    if row is None:
        return True
    if any(fnmatch.fnmatchcase(model_id, p) for p in row.blocked_models or []):
        return False
    allowed = row.allowed_models or []
    return not allowed or any(fnmatch.fnmatchcase(model_id, p) for p in allowed)


def model_list(*, company_id: int | None = None) -> list[dict[str, Any]]:
    """What the caller may use: enabled models its company's policy allows."""
    return [spec.public() for spec in sorted(models_all().values(), key=lambda s: (s.provider, s.id))
            if spec.enabled and model_allowed(company_id, spec.id)]


# --- budgets and spend --------------------------------------------------------------------
budgets_cache: VersionedCache[tuple[int, int | None], list[Budget]] = VersionedCache(
    "budgets", ttl_s=lambda: settings.MAGEAGENT_ROUTING["BUDGET_CACHE_S"])


def budgets_for(*, company_id: int, app_id: int | None) -> list[Budget]:
    """The budgets that apply to an app, cached per process for BUDGET_CACHE_S behind a
    version every process bumps when it changes a Budget (routing.budgets): they are read on
    every enqueue and task, and a new budget binds the very next task everywhere."""
    return budgets_cache.get((company_id, app_id), lambda: list(Budget.objects.filter(
        Q(app__isnull=True) | Q(app_id=app_id), company_id=company_id, enabled=True)))


def spend_total(*, company_id: int, app_id: int | None, since: date) -> Decimal:
    qs = Spend.objects.filter(company_id=company_id, day__gte=since)
    if app_id is not None:
        qs = qs.filter(app_id=app_id)
    return qs.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)


def spend_summary(*, company_id: int, since: date) -> dict[str, Any]:
    row = Spend.objects.filter(company_id=company_id, day__gte=since).aggregate(
        cost=Sum("cost_usd"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), tasks=Sum("tasks"))
    return {"cost_usd": float(row["cost"] or 0), "prompt_tokens": row["prompt"] or 0,
            "completion_tokens": row["completion"] or 0, "tasks": row["tasks"] or 0}
