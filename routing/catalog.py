"""The model catalog's source: litellm's bundled model map (offline), plus the default
quality tier of each model. `catalog_refresh` writes it into routing.Model without
touching what staff own (enabled, auto_route, quality_tier, the *_override columns)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.db import transaction

from .complexity import DATA_DIR
from .models import Model

SOURCE_FIELDS = ("provider", "context_window", "max_output_tokens", "input_cost_per_token", "output_cost_per_token",
                 "supports_tools", "supports_vision", "supports_json", "default_tier", "in_source")


@dataclass(frozen=True)
class SourceModel:
    id: str
    provider: str
    context_window: int | None
    max_output_tokens: int | None
    input_cost_per_token: float
    output_cost_per_token: float
    supports_tools: bool
    supports_vision: bool
    supports_json: bool
    default_tier: int | None
    auto_route: bool


@cache
def _tier_rules() -> tuple[list[tuple[re.Pattern[str], int]], list[tuple[float, int]], re.Pattern[str]]:
    raw = json.loads((DATA_DIR / "tiers.json").read_text())
    families = [(re.compile(pattern), int(tier)) for pattern, tier in raw["families"]]
    prices = [(float(limit), int(tier)) for limit, tier in raw["price_tiers"]]
    return families, prices, re.compile(raw["not_auto_routed"])


def default_tier(model_id: str, input_cost: float, output_cost: float) -> int | None:
    """The family's tier when the name says it (gpt-4o-mini, claude-opus, gemini-pro...),
    else one from the blended price; None when the map has no price (never auto-routed)."""
    families, prices, _ = _tier_rules()
    name = model_id.rsplit("/", 1)[-1].lower()
    for pattern, tier in families:
        if pattern.search(name):
            return tier
    if not input_cost and not output_cost:
        return None
    blended = (input_cost + 3 * output_cost) / 4 * 1e6
    for limit, tier in prices:
        if blended < limit:
            return tier
    return 3


def _auto_routable(model_id: str, info: dict[str, Any], tier: int | None) -> bool:
    _, _, excluded = _tier_rules()
    priced = bool(info.get("input_cost_per_token") or info.get("output_cost_per_token"))
    return tier is not None and priced and not excluded.search(model_id.lower())


def _source_model(model_id: str, provider: str, info: dict[str, Any], *, tier_of: str | None = None) -> SourceModel:
    input_cost = float(info.get("input_cost_per_token") or 0.0)
    output_cost = float(info.get("output_cost_per_token") or 0.0)
    tier = default_tier(tier_of or model_id, input_cost, output_cost)
    return SourceModel(
        id=model_id, provider=provider,
        context_window=_int(info.get("max_input_tokens") or info.get("max_tokens")),
        max_output_tokens=_int(info.get("max_output_tokens") or info.get("max_tokens")),
        input_cost_per_token=input_cost, output_cost_per_token=output_cost,
        supports_tools=bool(info.get("supports_function_calling")),
        supports_vision=bool(info.get("supports_vision")),
        supports_json=bool(info.get("supports_response_schema") or info.get("supports_json_mode")),
        default_tier=tier, auto_route=_auto_routable(tier_of or model_id, info, tier),
    )


@cache
def _openrouter_models() -> dict[str, str]:
    return dict(json.loads((DATA_DIR / "openrouter.json").read_text())["models"])


def catalog_source(providers: list[str] | None = None) -> list[SourceModel]:
    import litellm

    wanted = catalog_providers(providers)
    out = []
    for model_id, info in litellm.model_cost.items():
        provider = info.get("litellm_provider")
        if info.get("mode") != "chat" or provider not in wanted or model_id.startswith("ft:"):
            continue
        out.append(_source_model(model_id, provider, info))
    if "openrouter" in wanted:
        # litellm's bundled map has no OpenRouter entries; routing/data/openrouter.json
        # names the first-party entry each OpenRouter model serves (same limits and prices).
        listed = {m.id for m in out}
        for model_id, served in _openrouter_models().items():
            info = litellm.model_cost.get(served) or {}
            if model_id not in listed and info.get("mode") == "chat":
                out.append(_source_model(model_id, "openrouter", info, tier_of=served))
    return out


def catalog_providers(providers: list[str] | None = None) -> set[str]:
    return set(providers or settings.MAGEAGENT_ROUTING["CATALOG_PROVIDERS"])


def _int(value: Any) -> int | None:
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


# Counts this process's refreshes: the readers' cache (routing/selectors.py) reloads when it
# moved, so the catalog's writer need not know its readers.
refreshes = 0


def catalog_refresh(*, providers: list[str] | None = None, model_cls: Any = None) -> dict[str, int]:
    """Create new models, update litellm-owned columns of known ones, and mark the ones
    litellm dropped (`in_source=False`; they stay, with their overrides, until staff
    delete them). Only the refreshed providers' models are touched: refreshing one
    provider says nothing about the others. `model_cls` lets the data migration pass its
    historical model."""
    if model_cls is None:
        model_cls = Model
    source = {m.id: m for m in catalog_source(providers)}
    with transaction.atomic():
        everything = {m.id: m for m in model_cls.objects.all()}
        refreshed = catalog_providers(providers)
        existing = {i: m for i, m in everything.items() if m.provider in refreshed or i in source}
        new = [model_cls(id=s.id, enabled=True, auto_route=s.auto_route, in_source=True,
                         **{f: getattr(s, f) for f in SOURCE_FIELDS if f != "in_source"})
               for model_id, s in source.items() if model_id not in everything]
        changed = []
        for model_id, row in existing.items():
            s = source.get(model_id)
            values = ({f: getattr(s, f) for f in SOURCE_FIELDS if f != "in_source"} | {"in_source": True}
                      if s is not None else {"in_source": False})
            if any(getattr(row, f) != v for f, v in values.items()):
                for f, v in values.items():
                    setattr(row, f, v)
                changed.append(row)
        model_cls.objects.bulk_create(new, batch_size=500, ignore_conflicts=True)
        model_cls.objects.bulk_update(changed, SOURCE_FIELDS, batch_size=500)
    global refreshes
    refreshes += 1
    return {"created": len(new), "updated": len(changed), "total": len(everything) + len(new),
            "dropped_by_source": sum(1 for i in existing if i not in source)}


def models_set_enabled(*, models: Any, enabled: bool) -> int:
    """Enable or disable catalog models (staff). Each row goes through save(), whose signal
    makes every process's catalog cache forget it; returns how many changed."""
    changed = 0
    for model in models:
        if model.enabled != enabled:
            model.enabled = enabled
            model.save(update_fields=["enabled"])
            changed += 1
    return changed


def catalog_ensure() -> None:
    """Seed an empty catalog on first use (a database flushed by tests, or migrated
    before this app's data migration existed)."""
    if not Model.objects.exists():
        catalog_refresh()
