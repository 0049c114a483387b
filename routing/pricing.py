"""Cost from usage, and usage estimates when a stream ended before the provider reported it."""

from __future__ import annotations

from typing import Any


def _price(model: str) -> tuple[float, float]:
    """USD per prompt and completion token: the catalog's (with staff overrides), else litellm's map."""
    from .selectors import model_get

    spec = model_get(model)
    if spec is not None:
        return spec.input_cost_per_token, spec.output_cost_per_token
    import litellm

    info = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/", 1)[-1]) or {}
    return float(info.get("input_cost_per_token") or 0.0), float(info.get("output_cost_per_token") or 0.0)


def cost_usd(model: str, usage: dict[str, int]) -> float:
    prompt_price, completion_price = _price(model)
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return round(prompt * prompt_price + completion * completion_price, 10)


def count_tokens(model: str, *, text: str | None = None, messages: list[dict[str, Any]] | None = None) -> int:
    import litellm

    try:
        return int(litellm.token_counter(model=model, text=text, messages=messages))
    except Exception:  # an unknown tokenizer must not fail a task: fall back to cl100k
        return int(litellm.token_counter(model="gpt-4o-mini", text=text, messages=messages))


def usage_estimate(model: str, messages: list[dict[str, Any]], content: str) -> dict[str, int]:
    return {"prompt_tokens": count_tokens(model, messages=messages),
            "completion_tokens": count_tokens(model, text=content) if content else 0}
