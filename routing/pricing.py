"""Cost from usage, and usage estimates when a stream ended before the provider reported it."""

from __future__ import annotations

from functools import cache
from typing import Any

from .selectors import model_get


def _price(model: str) -> tuple[float, float]:
    """USD per prompt and completion token: the catalog's (with staff overrides), else litellm's map."""
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


# The tokenizer used when litellm's choice for a model would download one from the
# Hugging Face hub (Cohere, Llama): a task must not wait on, or fail for, the network.
FALLBACK_TOKENIZER_MODEL = "gpt-4o"


@cache
def tokenizer_model(model: str) -> str:
    """The name to hand litellm's token counter for `model`: one standing for its tiktoken
    encoding (gpt-4o for o200k, gpt-3.5-turbo for cl100k, so equal names mean equal counts),
    the model itself for the Anthropic tokenizer litellm ships, gpt-4o for the ones litellm
    would download."""
    try:
        from litellm.litellm_core_utils.token_counter import openai_tokenizer_encoding
        from litellm.utils import huggingface_tokenizer_kind

        kind = huggingface_tokenizer_kind(model)
        if kind is None:
            return "gpt-4o" if openai_tokenizer_encoding(model).name == "o200k_base" else "gpt-3.5-turbo"
    except Exception:  # an older or newer litellm without these helpers
        return FALLBACK_TOKENIZER_MODEL
    return model if kind == "anthropic" else FALLBACK_TOKENIZER_MODEL


def count_tokens(model: str, *, text: str | None = None, messages: list[dict[str, Any]] | None = None,
                 tools: list[dict[str, Any]] | None = None) -> int:
    """Tokens of a text, or of a request's messages plus the tool schemas sent with them
    (providers bill those as prompt tokens on every call)."""
    import litellm

    extra: dict[str, Any] = {"tools": tools} if tools and messages is not None else {}
    try:
        return int(litellm.token_counter(model=tokenizer_model(model), text=text, messages=messages, **extra))
    except Exception:  # an unknown tokenizer must not fail a task: fall back to gpt-4o's
        return int(litellm.token_counter(model=FALLBACK_TOKENIZER_MODEL, text=text, messages=messages, **extra))


# Prompt tokens a provider adds to every request that carries tools, beyond the schemas
# themselves: Anthropic's tool-use system prompt (346 tokens for Claude 4 models with
# tool_choice auto, per Anthropic's pricing docs). Counted so a reservation bounds the cost.
TOOL_PROMPT_TOKENS = {"anthropic": 346}


def request_tokens(provider: str, counted: int, *, tools: bool) -> int:
    """A request's billed prompt tokens from its tokenizer count."""
    return counted + (TOOL_PROMPT_TOKENS.get(provider, 0) if tools else 0)


def usage_estimate(model: str, messages: list[dict[str, Any]], content: str) -> dict[str, int]:
    return {"prompt_tokens": count_tokens(model, messages=messages),
            "completion_tokens": count_tokens(model, text=content) if content else 0}
