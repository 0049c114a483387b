"""What every direct provider stream shares: the deployment, the deltas a stream yields,
the errors a provider gives, this event loop's connection pool (providers/httpstream.py) and
its httpx client for endpoints behind a proxy, SSE framing, and `stream_direct`, which posts
a request and feeds the body to a family's event parser (providers/llm.py for
OpenAI-compatible endpoints, providers/families.py for Anthropic, Gemini and Cohere)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx
import orjson
from django.conf import settings

from . import httpstream


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


# How providers word "the prompt is longer than the model's window": OpenAI-compatible ones,
# Anthropic, Gemini ("The input token count (...) exceeds the maximum number of tokens allowed"),
# Cohere ("too many tokens").
_CONTEXT_PHRASES = ("context length", "prompt is too long", "exceeds the maximum number of tokens",
                    "too many tokens")


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
    # Only a refused request (4xx) is about the prompt: a 429 or a 5xx that mentions tokens
    # is still worth retrying.
    wordy = 400 <= status < 500 and status != 429 and any(phrase in lowered for phrase in _CONTEXT_PHRASES)
    if code == "context_length_exceeded" or wordy:
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


_pools: dict[asyncio.AbstractEventLoop, httpstream.Pool] = {}


def pool() -> httpstream.Pool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = httpstream.Pool(limit=settings.MAGEAGENT["LLM_MAX_CONNECTIONS"], connect_timeout=10,
                                              read_timeout=settings.MAGEAGENT["LLM_TIMEOUT_S"])
    return pool


_proxy_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def proxy_client() -> httpx.AsyncClient:
    """This event loop's client for endpoints the environment proxies: httpx reads
    HTTP(S)_PROXY, ALL_PROXY and NO_PROXY itself (trust_env), forwarding http:// requests in
    absolute form and tunnelling https:// ones with CONNECT."""
    loop = asyncio.get_running_loop()
    client = _proxy_clients.get(loop)
    if client is None:
        opts = settings.MAGEAGENT
        try:
            client = _proxy_clients[loop] = httpx.AsyncClient(
                trust_env=True, limits=httpx.Limits(max_connections=opts["LLM_MAX_CONNECTIONS"]),
                timeout=httpx.Timeout(connect=10, read=opts["LLM_TIMEOUT_S"], write=opts["LLM_TIMEOUT_S"], pool=None))
        except ImportError as exc:  # a socks5:// proxy: httpx needs httpx[socks], not installed
            raise ProviderError("provider_error", f"unsupported outbound proxy: {exc}") from exc
    return client


class ProxiedStream:
    """An httpx response read as httpstream.Stream is (status, headers, reads, read): the
    same family parsers run behind a proxy. Closed before its end, httpx drops the
    connection, and with it the proxy's connection to the provider."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status, self.headers = response.status_code, response.headers
        self._raw = response.aiter_raw()  # one iterator: a reader may stop and read on (stream_direct does)

    async def __aenter__(self) -> ProxiedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.response.aclose()

    def reads(self, pace: httpstream.Pace | None = None) -> AsyncIterator[bytes]:
        return self._raw  # pace: httpx reads as data comes

    async def read(self, limit: int = httpstream.MAX_ERROR_BODY) -> bytes:
        out = b""
        async for data in self.reads():
            out += data
            if len(out) >= limit:
                return out[:limit]
        return out


async def post_proxied(url: str, body: bytes, headers: dict[str, str]) -> ProxiedStream:
    client = proxy_client()
    request = client.build_request("POST", url, content=body, headers={"Accept-Encoding": "identity", **headers})
    return ProxiedStream(await client.send(request, stream=True))


_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
               "NO_PROXY")


def proxied(url: str) -> bool:
    """Whether the environment sends requests to `url` through a proxy (HTTP_PROXY,
    HTTPS_PROXY, ALL_PROXY, minus NO_PROXY), as httpx would read it. Once per call: without
    any proxy variable it reads only those (urllib's getproxies reads the whole environment
    on every call)."""
    if not any(map(os.environ.get, _PROXY_VARS)):
        return False
    parts = urlsplit(url)
    proxies = getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not proxy_bypass(parts.hostname or "")


class SSEEvents:
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



class EventParser(Protocol):
    """A family's stream as `stream_direct` reads it: bytes in, deltas out; `done` once the
    family's last event came."""

    @property
    def done(self) -> bool: ...

    def feed(self, data: bytes) -> list[Delta]: ...


async def stream_direct(url: str, payload: dict[str, Any], headers: dict[str, str], parser: EventParser,
                         pace: httpstream.Pace | None) -> AsyncIterator[Delta]:
    """POST `payload` and yield what `parser` (feed(bytes) -> deltas, `done`) makes of the body:
    over the lean client, or through httpx when the environment proxies `url` (the lean
    client speaks no proxy protocol)."""
    post: Callable[[str, bytes, dict[str, str]], Awaitable[httpstream.Stream | ProxiedStream]]
    post = post_proxied if proxied(url) else pool().post
    try:
        async with await post(url, orjson.dumps(payload), headers) as resp:
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
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.UnsupportedProtocol) as exc:
        raise ProviderError("provider_unreachable", f"{type(exc).__name__}: {exc}", retryable=True) from exc
    except httpx.TransportError as exc:  # the request went out: a read timeout, a dropped stream
        raise ProviderError("provider_stream_interrupted", f"stream interrupted: {type(exc).__name__}: {exc}",
                            retryable=True) from exc
    except (TimeoutError, OSError) as exc:
        raise ProviderError("provider_unreachable", f"{type(exc).__name__}: {exc}", retryable=True) from exc
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ProviderError("provider_error", f"malformed stream event: {exc}", retryable=True) from exc



def litellm_error(exc: Exception) -> ProviderError:
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



async def close_sessions() -> None:
    """Close this event loop's provider connections (before the loop ends)."""
    loop = asyncio.get_running_loop()
    pool = _pools.pop(loop, None)
    if pool is not None:
        pool.close()
    client = _proxy_clients.pop(loop, None)
    if client is not None:
        await client.aclose()
