"""Streaming chat completions.

OpenAI-compatible endpoints (OpenAI, OpenRouter, vLLM, a local gateway, the simulator) are
streamed directly: providers/httpstream.py reads the body a read at a time and each
`data:` line is parsed with orjson, a fraction of the CPU per chunk of litellm's streaming
wrapper or of aiohttp (BENCHMARKS.md, "Figures behind the design"). Every other provider
goes through litellm.acompletion, which translates the rest (Vertex AI, Bedrock, ...) into
the same deltas. An endpoint the environment sends through a proxy (HTTPS_PROXY and friends)
is streamed by the same code over httpx, which speaks the proxy protocols
(providers/wire.py, stream_direct).

Anthropic (Messages), Gemini (Google AI Studio's streamGenerateContent) and Cohere (chat v2)
are streamed directly too, over the same client (providers/families.py), with litellm still
mapping their requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

from . import httpstream
from .families import (
    cohere_params,
    is_anthropic,
    is_cohere_v2,
    is_gemini,
    stream_anthropic,
    stream_cohere,
    stream_gemini,
)
from .wire import Delta, Deployment, ProviderError, SSEEvents, close_sessions, litellm_error, stream_direct

__all__ = ["Delta", "Deployment", "ProviderError", "close_sessions", "request_body", "stream_chat",
           "supported_params"]

# --- direct OpenAI-compatible streaming ------------------------------------------------
OPENAI_BASE = "https://api.openai.com/v1"


def request_body(deployment: Deployment, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 max_tokens: int | None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": deployment.model, "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    if params:
        body.update(params)
        if not tools:
            body.pop("tool_choice", None)  # providers refuse a tool_choice without tools
    if tools:
        body["tools"] = tools
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body


async def _stream_openai(deployment: Deployment, body: dict[str, Any],
                         pace: httpstream.Pace | None = None) -> AsyncIterator[Delta]:
    base = (deployment.api_base or OPENAI_BASE).rstrip("/")
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if deployment.api_key:
        headers["Authorization"] = f"Bearer {deployment.api_key}"
    async for delta in stream_direct(f"{base}/chat/completions", body, headers, _OpenAIDeltas(), pace):
        yield delta


class _OpenAIDeltas:
    """The OpenAI-compatible stream as `_stream_direct` reads it: bytes in, deltas out."""

    def __init__(self) -> None:
        self.events = SSEEvents()

    @property
    def done(self) -> bool:
        return self.events.done

    def feed(self, data: bytes) -> list[Delta]:
        return _deltas(self.events.feed(data))


def _deltas(objs: list[dict[str, Any]]) -> list[Delta]:
    """One read's events as deltas, a run of text-only ones merged into one: the emitter
    would join them into one chunk anyway, and work per token is most of what a stream
    costs the worker. Events with nothing in them (the role-only first one) are dropped."""
    out: list[Delta] = []
    texts: list[str] = []
    for obj in objs:
        choices = obj.get("choices")
        if choices and obj.get("usage") is None:
            choice = choices[0]
            d = choice.get("delta")
            if choice.get("finish_reason") is None and (d is None or d.get("tool_calls") is None):
                if d and d.get("content"):
                    texts.append(d["content"])
                continue
        if texts:
            out.append(Delta(content="".join(texts)))
            texts.clear()
        out.append(_delta(obj))
    if texts:
        out.append(Delta(content="".join(texts)))
    return out


def _delta(obj: dict[str, Any]) -> Delta:
    if "error" in obj and not obj.get("choices"):
        err = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
        raise ProviderError("provider_error", str(err.get("message", "provider error"))[:1000], retryable=True)
    delta = Delta(usage=obj.get("usage"))
    choices = obj.get("choices")
    if choices:
        choice = choices[0]
        d = choice.get("delta") or {}
        delta.content = d.get("content")
        delta.tool_calls = d.get("tool_calls")
        delta.finish_reason = choice.get("finish_reason")
    return delta


# --- everything else, through litellm ---------------------------------------------------

async def _stream_litellm(deployment: Deployment, body: dict[str, Any]) -> AsyncIterator[Delta]:
    import litellm

    kwargs = {k: v for k, v in body.items() if k != "model"}
    kwargs.update(deployment.extra)
    # What the provider does not take is left out (the pipeline notes it in the task's
    # events first, from supported_params), rather than failing the call.
    kwargs["drop_params"] = True
    if deployment.api_base:
        kwargs["api_base"] = deployment.api_base
    if deployment.api_key:
        kwargs["api_key"] = deployment.api_key
    try:
        response = await litellm.acompletion(model=deployment.litellm_model, **kwargs)
        async for chunk in response:
            delta = Delta(usage=_usage_dict(getattr(chunk, "usage", None)))
            if chunk.choices:
                choice = chunk.choices[0]
                delta.content = choice.delta.content
                calls = choice.delta.tool_calls
                if calls:
                    delta.tool_calls = [c.model_dump() if hasattr(c, "model_dump") else dict(c) for c in calls]
                delta.finish_reason = choice.finish_reason
            yield delta
    except ProviderError:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # litellm maps every provider's errors onto its exception types
        raise litellm_error(exc) from exc


def _usage_dict(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    if hasattr(usage, "model_dump"):
        usage = usage.model_dump()
    return {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


@cache
def _supported_params(litellm_model: str) -> frozenset[str] | None:
    import litellm

    try:
        model, provider, _, _ = litellm.get_llm_provider(litellm_model)
        names = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception:  # a provider litellm cannot name: send everything, litellm drops what it must
        return None
    return frozenset(names) if names is not None else None


def supported_params(deployment: Deployment, *, tools: bool = False) -> frozenset[str] | None:
    """The OpenAI parameters the deployment's path maps (None: unknown): litellm's list for
    the provider, and what the direct Cohere path maps itself. `tools`: the call has tools."""
    names = _supported_params(deployment.litellm_model)
    if names is not None and is_cohere_v2(deployment):
        return names | cohere_params(tools=tools)
    return names


def stream_chat(deployment: Deployment, messages: list[dict[str, Any]], *,
                tools: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
                pace: httpstream.Pace | None = None, params: dict[str, Any] | None = None) -> AsyncIterator[Delta]:
    """The answer's deltas. `pace`: how long the caller can wait before the next read (see
    httpstream.Stream.reads); the litellm path reads as fast as litellm yields. `params`:
    sampling parameters by their OpenAI names (temperature, stop, seed, response_format, ...)."""
    body = request_body(deployment, messages, tools, max_tokens, params)
    if deployment.openai_compatible:
        return _stream_openai(deployment, body, pace)
    if is_anthropic(deployment):
        return stream_anthropic(deployment, body, pace)
    if is_cohere_v2(deployment):
        return stream_cohere(deployment, body, pace)
    if is_gemini(deployment):
        return stream_gemini(deployment, body, pace)
    return _stream_litellm(deployment, body)
