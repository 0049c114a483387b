"""The worker's HTTP client for provider streams (providers/httpstream.py), against raw
TCP servers that answer with exactly the bytes a test needs: split reads, each body
framing, keep-alive, servers that close, stall or never answer."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from providers import httpstream
from providers.llm import Deployment, ProviderError, _deltas, close_sessions, stream_chat
from providers.wire import proxied

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A TCP server on 127.0.0.1 that runs `handler` per connection and counts connections."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls, self.connections = handler, tls, 0
        self.closed = asyncio.Event()

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                self.closed.set()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1/chat/completions"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    return head, await reader.readexactly(length)


CHUNKED_OK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(part: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(part), part)


def chunked(*parts: bytes) -> bytes:
    return b"".join(map(chunk, parts)) + b"0\r\n\r\n"


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def pool(ssl_context: ssl.SSLContext | None = None, **kw: float) -> httpstream.Pool:
    return httpstream.Pool(limit=int(kw.get("limit", 10)), connect_timeout=kw.get("connect_timeout", 2),
                           read_timeout=kw.get("read_timeout", 5), ssl_context=ssl_context)


async def body_of(p: httpstream.Pool, url: str) -> tuple[int, bytes]:
    async with await p.post(url, b'{"x":1}', {"Content-Type": "application/json"}) as resp:
        return resp.status, b"".join([data async for data in resp.reads()])


SSE = b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\ndata: {"choices":[{"delta":{"content":"lo"}}]}\n\n' \
      b"data: [DONE]\n\n"


async def test_a_chunked_body_split_across_reads_arrives_whole_and_the_connection_is_reused():
    async def handler(reader, writer):
        while True:
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            assert b"POST /v1/chat/completions HTTP/1.1" in head and body == b'{"x":1}'
            wire = CHUNKED_OK + chunked(SSE[:7], SSE[7:40], SSE[40:])
            for i in range(0, len(wire), 5):  # the response a few bytes at a time
                await send(writer, wire[i:i + 5])
                await asyncio.sleep(0)

    async with Server(handler) as server:
        p = pool()
        assert await body_of(p, server.url) == (200, SSE)
        assert await body_of(p, server.url) == (200, SSE)
        assert server.connections == 1
        p.close()


@pytest.mark.parametrize("framing", ["content-length", "close-delimited"])
async def test_bodies_with_a_length_or_ended_by_close_are_read_to_their_end(framing):
    async def handler(reader, writer):
        await read_request(reader)
        length = f"Content-Length: {len(SSE)}\r\n" if framing == "content-length" else "Connection: close\r\n"
        await send(writer, f"HTTP/1.1 200 OK\r\n{length}\r\n".encode() + SSE)

    async with Server(handler) as server:
        p = pool()
        assert await body_of(p, server.url) == (200, SSE)
        p.close()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1, and a server context presenting it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    return cert, server_tls


async def test_https_is_verified_against_the_trusted_certificates(tls):
    cert, server_tls = tls

    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with Server(handler, tls=server_tls) as server:
        trusting = pool(ssl.create_default_context(cafile=str(cert)))
        assert await body_of(trusting, server.url) == (200, b"ok")
        with pytest.raises(httpstream.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await body_of(pool(), server.url)  # the system's trust store does not know it
        trusting.close()


async def test_a_server_that_closes_mid_body_is_an_interrupted_stream():
    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, CHUNKED_OK + chunk(SSE[:7]))

    async with Server(handler) as server:
        p = pool()
        with pytest.raises(httpstream.StreamError) as caught:
            await body_of(p, server.url)
        assert caught.value.answered
        p.close()


def paced_server(tokens: int, interval_s: float) -> Handler:
    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, CHUNKED_OK)
        for i in range(tokens):
            await send(writer, chunk(b"t%02d " % i))
            await asyncio.sleep(interval_s)
        await send(writer, b"0\r\n\r\n")
    return handler


async def test_a_paced_reader_gets_what_arrived_during_the_hold_as_one_read():
    async with Server(paced_server(20, 0.005)) as server:
        p = pool()
        async with await p.post(server.url, b"{}", {}) as resp:
            # One hold longer than the whole stream: what follows the first read comes as one.
            reads = [data async for data in resp.reads(lambda: 0.5)]
        p.close()
    assert b"".join(reads) == b"".join(b"t%02d " % i for i in range(20))
    assert len(reads) <= 3  # unpaced, it is a read per token


async def test_a_hold_longer_than_the_read_timeout_is_not_a_timeout():
    async with Server(paced_server(3, 0.05)) as server:
        p = pool(read_timeout=0.2)
        async with await p.post(server.url, b"{}", {}) as resp:
            reads = [data async for data in resp.reads(lambda: 0.4)]
        p.close()
    assert b"".join(reads) == b"t00 t01 t02 "


async def test_a_reused_connection_the_server_had_closed_is_retried_on_a_fresh_one():
    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        # Keeps the connection open but drops it as the next request arrives, without answering.
        await reader.read(1)

    async with Server(handler) as server:
        p = pool()
        assert await body_of(p, server.url) == (200, b"ok")
        assert await body_of(p, server.url) == (200, b"ok")
        assert server.connections == 2
        p.close()


async def test_a_server_silent_past_the_read_timeout_fails_the_stream():
    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, CHUNKED_OK)
        await asyncio.sleep(5)

    async with Server(handler) as server:
        p = pool(read_timeout=0.3)
        with pytest.raises(TimeoutError):
            await body_of(p, server.url)
        p.close()


async def test_a_stream_closed_before_its_end_closes_the_connection_at_once():
    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, CHUNKED_OK + chunk(SSE[:7]))
        assert await reader.read(1) == b""  # our side closed it: the provider sees EOF

    async with Server(handler) as server:
        p = pool()
        async with await p.post(server.url, b"{}", {}) as resp:
            async for _ in resp.reads():
                break
        await asyncio.wait_for(server.closed.wait(), 2)
        assert not p.idle.get(("http", "127.0.0.1", server.port))
        p.close()


async def test_no_more_than_the_limit_of_connections_are_open_at_once():
    in_flight, most = 0, 0

    async def handler(reader, writer):
        nonlocal in_flight, most
        await read_request(reader)
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        await send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    async with Server(handler) as server:
        p = pool(limit=2)
        results = await asyncio.gather(*(body_of(p, server.url) for _ in range(6)))
        assert results == [(200, b"ok")] * 6 and most == 2
        p.close()


# --- through stream_chat: what the pipeline sees ----------------------------------------------
@pytest.fixture
async def loop_pool():
    yield
    await close_sessions()  # this test's loop ends here


def deployment(port: int) -> Deployment:
    return Deployment(model="m", provider="local", litellm_model="openai/m", api_base=f"http://127.0.0.1:{port}/v1",
                      api_key="sk-test", openai_compatible=True)


async def collect(port: int) -> str:
    return "".join([d.content async for d in stream_chat(deployment(port), [{"role": "user", "content": "hi"}])
                    if d.content])


async def test_stream_chat_yields_the_deltas_and_sends_the_key(loop_pool):
    seen: list[bytes] = []

    async def handler(reader, writer):
        head, _ = await read_request(reader)
        seen.append(head)
        await send(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunked(SSE.replace(b"\n", b"\r\n")))

    async with Server(handler) as server:
        assert await collect(server.port) == "Hello"
    assert b"Authorization: Bearer sk-test" in seen[0] and f"Host: 127.0.0.1:{server.port}".encode() in seen[0]


async def test_stream_chat_turns_a_429_into_a_retryable_rate_limit_with_its_wait(loop_pool):
    async def handler(reader, writer):
        await read_request(reader)
        body = b'{"error":{"message":"slow down","type":"rate_limit"}}'
        await send(writer, b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))

    async with Server(handler) as server:
        with pytest.raises(ProviderError) as caught:
            await collect(server.port)
    assert (caught.value.code, caught.value.retryable, caught.value.retry_after) == ("rate_limited", True, 3.0)
    assert caught.value.message == "slow down"


async def test_stream_chat_reports_a_stream_without_done_as_interrupted_and_a_dead_port_as_unreachable(loop_pool):
    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + SSE[:SSE.index(b"data: [DONE]")])

    async with Server(handler) as server:
        with pytest.raises(ProviderError) as interrupted:
            await collect(server.port)
        port = server.port
    assert interrupted.value.code == "provider_stream_interrupted" and interrupted.value.retryable
    await asyncio.sleep(0.05)
    with pytest.raises(ProviderError) as unreachable:
        await collect(port)  # nothing listens there now
    assert unreachable.value.code == "provider_unreachable" and unreachable.value.retryable


async def test_stream_chat_refuses_a_malformed_event_as_a_provider_error(loop_pool):
    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: {not json\n\n")

    async with Server(handler) as server:
        with pytest.raises(ProviderError) as caught:
            await collect(server.port)
    assert caught.value.code == "provider_error"


async def test_after_done_the_rest_of_the_body_is_read_without_a_hold(loop_pool):
    async def handler(reader, writer):
        await read_request(reader)
        await send(writer, CHUNKED_OK)
        await asyncio.sleep(0.05)
        await send(writer, chunk(SSE))
        await asyncio.sleep(0.05)
        await send(writer, b"0\r\n\r\n")  # the body's end comes after [DONE]

    asked: list[float] = []

    def pace() -> float:  # a window that would hold the socket for 5 s after the first read
        asked.append(0.0 if not asked else 5.0)
        return asked[-1]

    async with Server(handler) as server:
        deltas = stream_chat(deployment(server.port), [{"role": "user", "content": "hi"}], pace=pace)
        text = await asyncio.wait_for(_joined(deltas), 2)
    assert text == "Hello" and asked == [0.0]


async def _joined(deltas) -> str:
    return "".join([d.content async for d in deltas if d.content])


def test_a_reads_text_events_become_one_delta_and_calls_finish_and_usage_keep_their_place():
    def event(delta: dict, finish: str | None = None, **extra: object) -> dict:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

    call = {"index": 0, "id": "call_1", "function": {"name": "web_search", "arguments": "{}"}}
    deltas = _deltas([event({"role": "assistant"}), event({"content": "Hel"}), event({"content": "lo"}),
                      event({"tool_calls": [call]}), event({"content": " again"}), event({}, "tool_calls"),
                      {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}])

    assert [(d.content, d.tool_calls, d.finish_reason, d.usage) for d in deltas] == [
        ("Hello", None, None, None), (None, [call], None, None), (" again", None, None, None),
        (None, None, "tool_calls", None), (None, None, None, {"prompt_tokens": 3, "completion_tokens": 4})]


@pytest.fixture
def proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_only_endpoints_the_environment_proxies_leave_the_direct_client(proxy_env):
    assert not proxied("https://api.openai.com/v1")  # no proxy configured

    proxy_env.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    proxy_env.setenv("NO_PROXY", "llm.internal,localhost")

    assert proxied("https://api.openai.com/v1")
    assert not proxied("https://llm.internal/v1")  # NO_PROXY
    assert not proxied("http://127.0.0.1:8000/v1")  # no proxy for plain http


async def test_a_proxied_openai_compatible_endpoint_is_streamed_through_the_proxy(proxy_env, loop_pool):
    seen: list[bytes] = []

    async def proxy(reader, writer):  # the proxy answers as the endpoint would
        head, _ = await read_request(reader)
        seen.append(head.split(b"\r\n")[0])
        await send(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + SSE)

    async with Server(proxy) as server:
        proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
        upstream = Deployment(model="m", provider="local", litellm_model="openai/m", api_key="sk-test",
                              api_base="http://llm.example.test:9/v1", openai_compatible=True)
        text = "".join([d.content async for d in stream_chat(upstream, [{"role": "user", "content": "hi"}])
                        if d.content])

    assert text == "Hello"
    assert seen == [b"POST http://llm.example.test:9/v1/chat/completions HTTP/1.1"]  # absolute form: a proxy's


async def test_a_proxied_https_endpoint_is_tunnelled_through_the_proxy_with_connect(proxy_env, loop_pool, tls):
    cert, server_tls = tls
    seen: list[bytes] = []

    async def endpoint(reader, writer):
        await read_request(reader)
        await send(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + SSE)

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await send(dst, data)
        finally:
            dst.close()

    async def proxy(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n")[0])
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await send(writer, b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async with Server(endpoint, tls=server_tls) as server, Server(proxy) as tunnel:
        proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{tunnel.port}")
        proxy_env.setenv("SSL_CERT_FILE", str(cert))  # httpx trusts the endpoint's certificate through it
        upstream = Deployment(model="m", provider="local", litellm_model="openai/m", api_key="sk-test",
                              api_base=f"https://127.0.0.1:{server.port}/v1", openai_compatible=True)
        text = "".join([d.content async for d in stream_chat(upstream, [{"role": "user", "content": "hi"}])
                        if d.content])

    assert text == "Hello"
    assert seen == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1".encode()]  # TLS end to end, inside the tunnel


async def test_a_socks_proxy_fails_the_call_with_a_provider_error_that_says_why(proxy_env, loop_pool):
    proxy_env.setenv("ALL_PROXY", "socks5://127.0.0.1:1")
    upstream = Deployment(model="m", provider="local", litellm_model="openai/m", api_key="sk-test",
                          api_base="https://llm.example.test/v1", openai_compatible=True)

    with pytest.raises(ProviderError, match="socksio") as caught:
        [d async for d in stream_chat(upstream, [{"role": "user", "content": "hi"}])]

    assert (caught.value.code, caught.value.retryable) == ("provider_error", False)
