"""Where a routed model is served (see routing/deployments.py for the sources)."""

from __future__ import annotations

from tasks.runtime.llm import Deployment

from .deployments import OPENAI_COMPATIBLE, registry

__all__ = ["OPENAI_COMPATIBLE", "deployment_for", "split_model"]


def split_model(model: str, provider: str | None = None) -> tuple[str, str]:
    """('provider', 'name') of a model id such as 'anthropic/claude-3-5-haiku' or 'gpt-4o'."""
    if provider:
        prefix = f"{provider}/"
        return provider, model[len(prefix):] if model.startswith(prefix) else model
    from .selectors import model_get

    spec = model_get(model)
    if spec is not None:
        return split_model(spec.id, spec.provider)
    if "/" in model:
        head, tail = model.split("/", 1)
        return head, tail
    return "openai", model


def deployment_for(model: str, provider: str | None = None) -> Deployment:
    """The model's first deployment (MAGEAGENT_LLM_API_BASE, the config file, or the
    provider's own API with its key from the environment)."""
    from .selectors import model_get

    spec = model_get(model)
    model_id = spec.id if spec is not None else model
    provider = provider or (spec.provider if spec is not None else split_model(model)[0])
    found = registry().deployments(model_id, provider)
    if found:
        return found[0].runtime()
    name = model_id if model_id.startswith(f"{provider}/") else f"{provider}/{model_id}"
    return Deployment(model=split_model(model_id, provider)[1], provider=provider, litellm_model=name)
