"""Streaming chat completions.

OpenAI-compatible endpoints (OpenAI, OpenRouter, vLLM, a local gateway, the simulator) are
streamed directly: providers/httpstream.py reads the body a read at a time and each
`data:` line is parsed with orjson, a fraction of the CPU per chunk of litellm's streaming
wrapper or of aiohttp (BENCHMARKS.md, "Figures behind the design"). Every other provider
goes through litellm.acompletion, which translates Anthropic, Gemini, Cohere, ... into the
same deltas, and so are OpenAI-compatible endpoints that the environment sends through a
proxy (HTTPS_PROXY and friends): the direct client speaks no proxy protocol.

Anthropic (Messages) and Cohere (chat v2) are streamed directly too, over the same client,
with litellm still mapping the request (AnthropicConfig, CohereV2ChatConfig): through
litellm's wrapper an Anthropic chunk costs the worker ~30 times what it costs here
(BENCHMARKS.md, "Provider families: CPU per chunk"), and litellm's Cohere stream parser
reads tool calls and usage where Cohere does not put them (tool calls were lost, and usage
was litellm's own count instead of Cohere's).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import orjson
from django.conf import settings

from . import httpstream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    """Where one model is served. `model` is the name sent in the request body."""

    model: str
    provider: str
    litellm_model: str
    api_base: str | None = None
    api_key: str | None = None
    openai_compatible: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass
class Delta:
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class ProviderError(Exception):
    """A failed provider call. `retryable` errors (429, 5xx, timeouts, connection) may be
    retried or sent to a fallback; the rest fail the task at once."""

    def __init__(self, code: str, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.retryable, self.retry_after = retryable, retry_after

    def as_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.status is not None:
            error["provider_status"] = self.status
        return error


def error_for_status(status: int, body: bytes, retry_after: str | None = None) -> ProviderError:
    message, code = f"provider returned HTTP {status}", None
    try:
        data = orjson.loads(body)
        err = data.get("error") or data  # Cohere: {"id", "message"} at the top
        message = str(err.get("message") or message)[:1000]
        code = err.get("code") or err.get("type")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    lowered = message.lower()
    if code == "context_length_exceeded" or "context length" in lowered or "prompt is too long" in lowered:
        return ProviderError("context_window_exceeded", message, status=status)
    if status == 429:
        wait = _float(retry_after)
        return ProviderError("rate_limited", message, status=status, retryable=True, retry_after=wait)
    if status >= 500 or status == 408:
        return ProviderError("provider_unavailable", message, status=status, retryable=True)
    if status in (401, 403):
        return ProviderError("provider_auth_error", message, status=status)
    return ProviderError("provider_error", message, status=status)


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


# --- direct OpenAI-compatible streaming ------------------------------------------------
OPENAI_BASE = "https://api.openai.com/v1"
_pools: dict[asyncio.AbstractEventLoop, httpstream.Pool] = {}


def _pool() -> httpstream.Pool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = httpstream.Pool(limit=settings.MAGEAGENT["LLM_MAX_CONNECTIONS"], connect_timeout=10,
                                              read_timeout=settings.MAGEAGENT["LLM_TIMEOUT_S"])
    return pool


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
    async for delta in _stream_direct(f"{base}/chat/completions", body, headers, _OpenAIDeltas(), pace):
        yield delta


class _SSEEvents:
    """The `data:` payloads of an SSE body fed a read at a time, as dicts; `done` once
    [DONE] came. Events may be split across reads and a read may hold many events.
    Synchronous, so a read costs the stream no extra generator step."""

    def __init__(self) -> None:
        self.buf = b""
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self.buf + data if self.buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            for line in buf[start:end].split(b"\n"):
                if line.startswith(b"data:"):
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        self.done = True
                        self.buf = b""
                        return out
                    out.append(orjson.loads(payload))
            start = end + 2
        self.buf = buf[start:]
        return out


class _OpenAIDeltas:
    """The OpenAI-compatible stream as `_stream_direct` reads it: bytes in, deltas out."""

    def __init__(self) -> None:
        self.events = _SSEEvents()

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


# --- Anthropic Messages, direct -----------------------------------------------------------
ANTHROPIC_BASE = "https://api.anthropic.com"
_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                     "pause_turn": "stop", "refusal": "content_filter"}


@cache
def _anthropic_config() -> Any:
    import litellm

    return litellm.AnthropicConfig()


def anthropic_request(deployment: Deployment, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The Messages request and headers litellm would send for this OpenAI-shaped body."""
    config = _anthropic_config()
    supported = set(config.get_supported_openai_params(deployment.model))
    given = {k: v for k, v in body.items() if k in supported and k not in ("stream", "model")}
    given.update({k: v for k, v in deployment.extra.items() if k in supported})
    optional = config.map_openai_params(given, {}, deployment.model, True)
    data: dict[str, Any] = config.transform_request(deployment.model, body["messages"], optional, {}, {})
    data["stream"] = True
    # A config deployment may leave the key to the environment, as litellm reads it.
    api_key = deployment.api_key or os.environ.get("ANTHROPIC_API_KEY")
    headers = config.validate_environment({}, deployment.model, body["messages"], optional, {},
                                          api_key=api_key, api_base=deployment.api_base)
    headers["accept"] = "text/event-stream"
    return data, headers


def _is_anthropic(deployment: Deployment) -> bool:
    return deployment.provider == "anthropic"


async def _stream_direct(url: str, payload: dict[str, Any], headers: dict[str, str], parser: Any,
                         pace: httpstream.Pace | None) -> AsyncIterator[Delta]:
    """POST `payload` and yield what `parser` (feed(bytes) -> deltas, `done`) makes of the body."""
    try:
        async with await _pool().post(url, orjson.dumps(payload), headers) as resp:
            if resp.status != 200:
                raise error_for_status(resp.status, await resp.read(), resp.headers.get("retry-after"))
            async for data in resp.reads(pace):
                for delta in parser.feed(data):
                    yield delta
                if parser.done:
                    break
            if not parser.done:
                raise ProviderError("provider_stream_interrupted", "the provider closed the stream early",
                                    retryable=True)
            async for _ in resp.reads():  # the rest of the body, unpaced, so the connection is reused
                pass
    except ProviderError:
        raise
    except httpstream.StreamError as exc:
        code = "provider_stream_interrupted" if exc.answered else "provider_unreachable"
        raise ProviderError(code, f"stream interrupted: {exc}" if exc.answered else str(exc),
                            retryable=True) from exc
    except (TimeoutError, OSError) as exc:
        raise ProviderError("provider_unreachable", f"{type(exc).__name__}: {exc}", retryable=True) from exc
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ProviderError("provider_error", f"malformed stream event: {exc}", retryable=True) from exc


async def _stream_anthropic(deployment: Deployment, body: dict[str, Any],
                            pace: httpstream.Pace | None = None) -> AsyncIterator[Delta]:
    base = (deployment.api_base or ANTHROPIC_BASE).rstrip("/")
    url = base if base.endswith("/v1/messages") else f"{base}/v1/messages"
    try:
        payload, headers = anthropic_request(deployment, body)
    except Exception as exc:  # litellm's mapping refused the request (no key, a bad parameter)
        raise _litellm_error(exc) from exc
    async for delta in _stream_direct(url, payload, headers, _AnthropicEvents(), pace):
        yield delta


class _AnthropicEvents:
    """The Messages SSE stream fed a read at a time, as deltas; `done` after message_stop.
    Tool-use blocks become OpenAI tool-call deltas numbered from 0; a read's text deltas
    become one delta."""

    def __init__(self) -> None:
        self.sse = _SSEEvents()
        self.done = False
        self.tools: dict[int, int] = {}  # content block index -> tool call index
        self.prompt_tokens = 0

    def feed(self, data: bytes) -> list[Delta]:
        out: list[Delta] = []
        texts: list[str] = []
        for obj in self.sse.feed(data):
            kind = obj.get("type")
            if kind == "content_block_delta":
                d = obj["delta"]
                if d.get("type") == "text_delta":
                    if d.get("text"):
                        texts.append(d["text"])
                    continue
            delta = self._delta(kind, obj)
            if delta is None:
                continue
            if texts:
                out.append(Delta(content="".join(texts)))
                texts.clear()
            out.append(delta)
        if texts:
            out.append(Delta(content="".join(texts)))
        return out

    def _delta(self, kind: str | None, obj: dict[str, Any]) -> Delta | None:
        if kind == "message_start":
            usage = (obj.get("message") or {}).get("usage") or {}
            self.prompt_tokens = sum(int(usage.get(k) or 0) for k in (
                "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        elif kind == "content_block_start":
            block = obj["content_block"]
            if block.get("type") == "tool_use":
                index = self.tools[obj["index"]] = len(self.tools)
                return Delta(tool_calls=[{"index": index, "id": block.get("id"), "type": "function",
                                          "function": {"name": block.get("name"), "arguments": ""}}])
        elif kind == "content_block_delta":
            d = obj["delta"]
            if d.get("type") == "input_json_delta" and obj["index"] in self.tools:
                return Delta(tool_calls=[{"index": self.tools[obj["index"]],
                                          "function": {"arguments": d.get("partial_json") or ""}}])
        elif kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            completion = int((obj.get("usage") or {}).get("output_tokens") or 0)
            usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                     "total_tokens": self.prompt_tokens + completion}
            return Delta(finish_reason=_ANTHROPIC_FINISH.get(str(reason), "stop"), usage=usage)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = obj.get("error") or {}
            etype, message = str(err.get("type")), str(err.get("message") or "provider error")[:1000]
            if etype == "rate_limit_error":
                raise ProviderError("rate_limited", message, retryable=True)
            code = "provider_unavailable" if etype in ("overloaded_error", "api_error") else "provider_error"
            raise ProviderError(code, message, retryable=True)
        return None


# --- Cohere chat v2, direct -------------------------------------------------------------
COHERE_BASE = "https://api.cohere.com/v2/chat"
_COHERE_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls",
                  "ERROR": "error", "TIMEOUT": "error"}


@cache
def _cohere_config() -> Any:
    import litellm

    return litellm.CohereV2ChatConfig()


def cohere_request(deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
    """The request body litellm would send Cohere for this OpenAI-shaped one (what Cohere
    does not take is left out, as drop_params does on the litellm path)."""
    config = _cohere_config()
    supported = set(config.get_supported_openai_params(deployment.model))
    given = {k: v for k, v in body.items() if k in supported and k not in ("stream", "model")}
    given.update({k: v for k, v in deployment.extra.items() if k in supported})
    optional = config.map_openai_params(given, {}, deployment.model, True)
    data: dict[str, Any] = config.transform_request(deployment.model, body["messages"], optional, {}, {})
    data["stream"] = True
    return data


def _is_cohere_v2(deployment: Deployment) -> bool:
    return deployment.provider in ("cohere_chat", "cohere") and not deployment.model.startswith("v1/")


async def _stream_cohere(deployment: Deployment, body: dict[str, Any],
                         pace: httpstream.Pace | None = None) -> AsyncIterator[Delta]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    api_key = deployment.api_key or os.environ.get("COHERE_API_KEY") or os.environ.get("CO_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        payload = cohere_request(deployment, body)
    except Exception as exc:  # litellm's mapping refused the request
        raise _litellm_error(exc) from exc
    async for delta in _stream_direct(deployment.api_base or COHERE_BASE, payload, headers, _CohereEvents(), pace):
        yield delta


class _CohereEvents:
    """Cohere's chat v2 stream fed a read at a time, as deltas: SSE (`event:`/`data:`
    lines) or one JSON object a line, whichever the server sends; `done` after message-end.
    A read's run of text deltas becomes one delta, as on the OpenAI-compatible path."""

    def __init__(self) -> None:
        self.buf = b""
        self.done = False

    def feed(self, data: bytes) -> list[Delta]:
        buf = self.buf + data if self.buf else data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        out: list[Delta] = []
        texts: list[str] = []
        for line in lines:
            line = line.strip()
            if line.startswith(b"data:"):
                line = line[5:].lstrip()
            elif not line or line.startswith((b"event:", b":", b"id:", b"retry:")):
                continue
            obj = orjson.loads(line)
            kind = obj.get("type")
            if kind == "content-delta":
                text = obj["delta"]["message"]["content"].get("text")
                if text:
                    texts.append(text)
                continue
            delta = self._delta(kind, obj)
            if delta is None:
                continue
            if texts:
                out.append(Delta(content="".join(texts)))
                texts.clear()
            out.append(delta)
            if self.done:
                break
        if texts:
            out.append(Delta(content="".join(texts)))
        return out

    def _delta(self, kind: str | None, obj: dict[str, Any]) -> Delta | None:
        if kind == "tool-call-start":
            call = obj["delta"]["message"]["tool_calls"]
            fn = call.get("function") or {}
            return Delta(tool_calls=[{"index": obj.get("index", 0), "id": call.get("id"), "type": "function",
                                      "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or ""}}])
        if kind == "tool-call-delta":
            args = obj["delta"]["message"]["tool_calls"]["function"].get("arguments") or ""
            return Delta(tool_calls=[{"index": obj.get("index", 0), "function": {"arguments": args}}])
        if kind == "message-end":
            self.done = True
            end = obj.get("delta") or {}
            tokens = (end.get("usage") or {}).get("tokens") or {}
            usage = None
            if tokens:
                prompt, completion = int(tokens.get("input_tokens") or 0), int(tokens.get("output_tokens") or 0)
                usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            reason = _COHERE_FINISH.get(str(end.get("finish_reason")), "stop")
            if reason == "error":
                raise ProviderError("provider_error", "the provider ended the answer with an error", retryable=True)
            return Delta(finish_reason=reason, usage=usage)
        return None


# --- everything else, through litellm ---------------------------------------------------
def _litellm_error(exc: Exception) -> ProviderError:
    import litellm
    from litellm.exceptions import MidStreamFallbackError

    if isinstance(exc, MidStreamFallbackError) and isinstance(exc.original_exception, Exception):
        # litellm makes some providers' requests (Gemini's) inside the stream iterator and
        # wraps what they answer, a 429 RESOURCE_EXHAUSTED included, in this one type.
        exc = exc.original_exception
    status = getattr(exc, "status_code", None)
    message = str(exc)[:1000]
    if isinstance(exc, litellm.ContextWindowExceededError):
        return ProviderError("context_window_exceeded", message, status=status)
    if isinstance(exc, litellm.RateLimitError):
        return ProviderError("rate_limited", message, status=status, retryable=True)
    if isinstance(exc, (litellm.Timeout, litellm.APIConnectionError, litellm.ServiceUnavailableError,
                        litellm.InternalServerError)):
        return ProviderError("provider_unavailable", message, status=status, retryable=True)
    if isinstance(exc, litellm.AuthenticationError):
        return ProviderError("provider_auth_error", message, status=status)
    if status is not None and (status >= 500 or status == 429):
        return ProviderError("provider_unavailable", message, status=status, retryable=True)
    return ProviderError("provider_error", message, status=status)


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
        raise _litellm_error(exc) from exc


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


def supported_params(deployment: Deployment) -> frozenset[str] | None:
    """The OpenAI parameters litellm maps for the deployment's provider (None: unknown)."""
    return _supported_params(deployment.litellm_model)


def stream_chat(deployment: Deployment, messages: list[dict[str, Any]], *,
                tools: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
                pace: httpstream.Pace | None = None, params: dict[str, Any] | None = None) -> AsyncIterator[Delta]:
    """The answer's deltas. `pace`: how long the caller can wait before the next read (see
    httpstream.Stream.reads); the litellm path reads as fast as litellm yields. `params`:
    sampling parameters by their OpenAI names (temperature, stop, seed, response_format, ...)."""
    body = request_body(deployment, messages, tools, max_tokens, params)
    if deployment.openai_compatible and not _proxied(deployment.api_base or OPENAI_BASE):
        return _stream_openai(deployment, body, pace)
    if _is_anthropic(deployment) and not _proxied(deployment.api_base or ANTHROPIC_BASE):
        return _stream_anthropic(deployment, body, pace)
    if _is_cohere_v2(deployment) and not _proxied(deployment.api_base or COHERE_BASE):
        return _stream_cohere(deployment, body, pace)
    return _stream_litellm(deployment, body)


_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
               "NO_PROXY")


def _proxied(url: str) -> bool:
    """Whether the environment sends requests to `url` through a proxy (HTTP_PROXY,
    HTTPS_PROXY, ALL_PROXY, minus NO_PROXY), as httpx and aiohttp would read it. Once per
    call: without any proxy variable it reads only those (urllib's getproxies reads the
    whole environment on every call)."""
    if not any(map(os.environ.get, _PROXY_VARS)):
        return False
    parts = urlsplit(url)
    proxies = getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not proxy_bypass(parts.hostname or "")


async def close_sessions() -> None:
    """Close this event loop's provider connections (before the loop ends)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        pool.close()
