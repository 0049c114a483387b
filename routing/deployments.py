"""Where each model is served, and the health of each place.

Deployments come from (1) `MAGEAGENT_LLM_API_BASE`, which sends every model to one
OpenAI-compatible gateway and overrides the rest; (2) the LiteLLM-proxy-style
`model_list` file named by `MAGEAGENT_LLM_CONFIG` (several deployments per model name,
api_base, `os.environ/NAME` keys, rpm/tpm); (3) provider keys in the environment.

litellm's Router holds them: it picks a deployment among a model's several (weighted by
rpm/tpm) and keeps their cooldowns and failure counts in Redis, so every worker steers
around a deployment any worker saw failing. Answers are still streamed by
providers.llm.stream_chat, so failures are reported back here to feed the cooldowns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from providers.llm import Deployment, ProviderError

from .models import Model

logger = logging.getLogger(__name__)

# Providers that speak the OpenAI protocol: streamed directly, without litellm's wrapper.
OPENAI_COMPATIBLE = {
    "openai": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "together_ai": "https://api.together.xyz/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "xai": "https://api.x.ai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "perplexity": "https://api.perplexity.ai",
    "hosted_vllm": "",
}
PROVIDER_KEYS = {
    "openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY",
    "cohere_chat": "COHERE_API_KEY", "cohere": "COHERE_API_KEY", "openrouter": "OPENROUTER_API_KEY",
    "mistral": "MISTRAL_API_KEY", "deepseek": "DEEPSEEK_API_KEY", "xai": "XAI_API_KEY", "groq": "GROQ_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY", "deepinfra": "DEEPINFRA_API_KEY", "perplexity": "PERPLEXITYAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
}
_ROUTER_SETTINGS = ("routing_strategy", "cooldown_time", "allowed_fails")


@dataclass(frozen=True)
class DeploymentSpec:
    id: str
    model: str  # the catalog model it serves (the litellm model_list's model_name)
    litellm_model: str  # "<provider>/<name>"
    source: str  # gateway | config | env
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    rpm: int | None = None
    tpm: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def provider(self) -> str:
        return self.litellm_model.split("/", 1)[0]

    def runtime(self) -> Deployment:
        provider, name = self.litellm_model.split("/", 1)
        if self.source == "gateway":
            # One gateway for everything: keep the routed model's name in the request body.
            return Deployment(model=self.model, provider=provider, litellm_model=self.litellm_model,
                              api_base=self.api_base, api_key=self.api_key, openai_compatible=True)
        compatible = provider in OPENAI_COMPATIBLE
        return Deployment(model=name, provider=provider, litellm_model=self.litellm_model,
                          api_base=self.api_base or OPENAI_COMPATIBLE.get(provider) or None, api_key=self.api_key,
                          openai_compatible=compatible, extra=dict(self.extra))

    def litellm_entry(self) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.litellm_model, **self.extra}
        for key in ("api_base", "api_key", "rpm", "tpm"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        return {"model_name": self.model, "litellm_params": params, "model_info": {"id": self.id}}


def _stable_id(prefix: str, *parts: Any) -> str:
    return f"{prefix}-" + hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _env_value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ.get(value.split("/", 1)[1])
    return value


def load_config(path: str) -> dict[str, Any]:
    """A LiteLLM proxy config (YAML or JSON): `model_list` and optional `router_settings`."""
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("model_list", []), list):
        raise ValueError(f"{path}: expected a mapping with a 'model_list' list")
    return data


def canonical_model(name: str, litellm_model: str) -> str:
    """The catalog id a config entry serves: its model_name when litellm knows it, else
    the litellm model's own name ('openai/gpt-4o' -> 'gpt-4o'), else the name as given."""
    import litellm

    for candidate in (name, litellm_model, litellm_model.split("/", 1)[-1]):
        if litellm.model_cost.get(candidate, {}).get("mode") == "chat":
            return candidate
    return name


def _fingerprint() -> tuple[Any, ...]:
    """What a registry is built from: a change (tests, a reloaded config) rebuilds it."""
    llm, routing = settings.MAGEAGENT, settings.MAGEAGENT_ROUTING
    return (llm["LLM_API_BASE"], llm["LLM_API_KEY"], llm["LLM_CONFIG"], settings.REDIS_URL,
            routing["REDIS_NAMESPACE"], routing["COOLDOWN_S"], routing["ALLOWED_FAILS"],
            tuple(os.environ.get(k) for k in PROVIDER_KEYS.values()))


class Registry:
    def __init__(self) -> None:
        self.fingerprint = _fingerprint()
        self.lock = threading.RLock()
        self.gateway = settings.MAGEAGENT["LLM_API_BASE"] or None
        self.gateway_key = settings.MAGEAGENT["LLM_API_KEY"] or None
        path = settings.MAGEAGENT["LLM_CONFIG"]
        self.config = load_config(path) if path else {}
        self.by_model: dict[str, list[DeploymentSpec]] = {}
        self.config_info: dict[str, dict[str, Any]] = {}
        for i, entry in enumerate(self.config.get("model_list") or []):
            params = {k: _env_value(v) for k, v in (entry.get("litellm_params") or {}).items()}
            litellm_model = str(params.pop("model"))
            if "/" not in litellm_model:
                litellm_model = f"openai/{litellm_model}"
            model = canonical_model(str(entry["model_name"]), litellm_model)
            info = entry.get("model_info") or {}
            spec = DeploymentSpec(
                id=str(info.get("id") or _stable_id("cfg", i, model, litellm_model, params.get("api_base"))),
                model=model, litellm_model=litellm_model, source="config", api_base=params.pop("api_base", None),
                api_key=params.pop("api_key", None), rpm=_int(params.pop("rpm", None)),
                tpm=_int(params.pop("tpm", None)), extra=params)
            self.by_model.setdefault(model, []).append(spec)
            self.config_info[model] = {**info, "litellm_model": litellm_model}
        self.keys = {p: os.environ[k] for p, k in PROVIDER_KEYS.items() if os.environ.get(k)}
        self._router: Any = None
        self.registered: set[str] = set()
        self.resolved: dict[tuple[str, str], list[DeploymentSpec]] = {}

    @property
    def configured(self) -> bool:
        """False in a bare development setup: then every model counts as deployable, so
        routing can still be tried out (the call itself will fail for want of a key)."""
        return bool(self.gateway or self.by_model or self.keys)

    def deployments(self, model: str, provider: str) -> list[DeploymentSpec]:
        key = (model, provider)
        found = self.resolved.get(key)
        if found is None:
            found = self.resolved[key] = self._deployments(model, provider)
        return found

    def _deployments(self, model: str, provider: str) -> list[DeploymentSpec]:
        if self.gateway:
            return [DeploymentSpec(id=_stable_id("gw", model, self.gateway), model=model,
                                   litellm_model=f"openai/{model}", source="gateway", api_base=self.gateway,
                                   api_key=self.gateway_key)]
        if model in self.by_model:
            return self.by_model[model]
        if provider in self.keys or not self.configured:
            name = model if model.startswith(f"{provider}/") else f"{provider}/{model}"
            return [DeploymentSpec(id=_stable_id("env", model, provider), model=model, litellm_model=name,
                                   source="env", api_key=self.keys.get(provider))]
        return []

    # --- litellm Router: selection and cooldowns -----------------------------------------
    @property
    def router(self) -> Any:
        if self._router is None:
            with self.lock:
                if self._router is None:
                    self._router = self._make_router()
        return self._router

    def _make_router(self) -> Any:
        from litellm import Router

        conf = settings.MAGEAGENT_ROUTING
        options: dict[str, Any] = {"cooldown_time": conf["COOLDOWN_S"], "allowed_fails": conf["ALLOWED_FAILS"],
                                   "routing_strategy": "simple-shuffle"}
        options.update({k: v for k, v in (self.config.get("router_settings") or {}).items()
                        if k in _ROUTER_SETTINGS})
        return Router(model_list=[], redis_url=settings.REDIS_URL, num_retries=0,
                      cache_kwargs={"namespace": conf["REDIS_NAMESPACE"]}, **options)

    def ensure(self, deployments: list[DeploymentSpec]) -> None:
        """Add deployments to the Router on first use (adding all 500+ up front costs ~2 s)."""
        missing = [d for d in deployments if d.id not in self.registered]
        if not missing:
            return
        from litellm.types.router import Deployment as RouterDeployment

        with self.lock:
            for d in missing:
                if d.id not in self.registered:
                    self.router.add_deployment(RouterDeployment(**d.litellm_entry()))
                    self.registered.add(d.id)

    def cooling(self, deployment_ids: list[str]) -> set[str]:
        if not deployment_ids:
            return set()
        active = self.router.cooldown_cache.get_active_cooldowns(model_ids=deployment_ids, parent_otel_span=None)
        return {model_id for model_id, _ in active or []}

    async def acooling(self, deployment_ids: list[str]) -> set[str]:
        active = await self.router.cooldown_cache.async_get_active_cooldowns(
            model_ids=deployment_ids, parent_otel_span=None)
        return {model_id for model_id, _ in active or []}

    async def pick(self, model: str, deployments: list[DeploymentSpec], exclude: set[str]) -> DeploymentSpec | None:
        """A healthy deployment of `model` not tried yet in this attempt, chosen by the
        Router when there are several; None when all are cooling down or tried."""
        fresh = [d for d in deployments if d.id not in exclude]
        if not fresh:
            return None
        if len(deployments) > 1:
            try:
                chosen = await self.router.async_get_available_deployment(model=model, request_kwargs={})
            except Exception:  # litellm raises when every deployment is cooling down
                return None
            chosen_id = (chosen or {}).get("model_info", {}).get("id")
            match = next((d for d in fresh if d.id == chosen_id), None)
            if match is not None:
                return match
        cooling = await self.acooling([d.id for d in fresh])
        return next((d for d in fresh if d.id not in cooling), None)

    def report_failure(self, deployment: DeploymentSpec, error: ProviderError) -> bool:
        """Count a failed call against the deployment; True when it went into cooldown.
        Must run on an event loop (litellm schedules its cooldown callbacks there)."""
        if error.code == "context_window_exceeded":
            return False  # the request was too big, the deployment is fine
        self.ensure([deployment])
        failure = DeploymentFailure(error.message, status_code=error.status or _status_for(error.code))
        params = {"model_info": {"id": deployment.id}, "metadata": {"model_group": deployment.model}}
        kwargs = {"exception": failure, "litellm_params": params}
        try:
            return bool(self.router.deployment_callback_on_failure(kwargs, None, None, None))
        except Exception:
            logger.exception("could not record the failure of deployment %s", deployment.id)
            return False


class DeploymentFailure(Exception):
    """What the Router's cooldown logic reads: a message and an HTTP status."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def _status_for(code: str) -> int:
    return {"rate_limited": 429, "provider_auth_error": 401}.get(code, 503)


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


_registry: Registry | None = None
_registry_lock = threading.Lock()


def registry() -> Registry:
    global _registry
    current = _registry
    if current is None or current.fingerprint != _fingerprint():
        with _registry_lock:
            if _registry is None or _registry.fingerprint != _fingerprint():
                _registry = Registry()
            current = _registry
    return current


def registry_reset() -> None:
    """Forget deployments (tests that change settings; a process reloading its config)."""
    global _registry
    with _registry_lock:
        _registry = None


def catalog_sync_config() -> None:
    """Give every model the config file serves a catalog row (models litellm's map does
    not know, such as a self-hosted one; prices and window come from its model_info)."""
    reg = registry()
    known = Model.objects.filter(id__in=list(reg.config_info)).values_list("id", flat=True)
    missing = set(reg.config_info) - set(known)
    rows = []
    for model in sorted(missing):
        info = reg.config_info[model]
        rows.append(Model(
            id=model, provider=info["litellm_model"].split("/", 1)[0],
            context_window=_int(info.get("max_input_tokens")), max_output_tokens=_int(info.get("max_output_tokens")),
            input_cost_per_token=float(info.get("input_cost_per_token") or 0.0),
            output_cost_per_token=float(info.get("output_cost_per_token") or 0.0),
            supports_tools=bool(info.get("supports_function_calling", True)), default_tier=_int(info.get("tier")),
            auto_route=bool(info.get("auto_route", False)), in_source=False, notes="added from MAGEAGENT_LLM_CONFIG"))
    if rows:
        Model.objects.bulk_create(rows, ignore_conflicts=True)
