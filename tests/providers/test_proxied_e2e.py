"""Every provider family behind an outbound proxy: the worker runs with HTTP_PROXY pointing at
a forward proxy this module starts, in front of the simulator, so each family's direct stream
(providers/families.py, providers/llm.py) goes out through httpx's proxy support and the
proxy sees every request it forwards."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.clients import Client, sim
from tests.providers.test_families_e2e import (
    FAMILIES,
    FamiliesStack,
    cancel_mid_stream,
    config_yaml,
    run,
    sim_requests,
    streamed_answer,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class ForwardProxy:
    """An HTTP forward proxy on its own thread and loop: an absolute-form request (what a
    client sends a proxy for an http:// URL) is forwarded in origin form to its host, CONNECT
    is tunnelled. A client connection is bound to the host of its first request, as httpx
    keeps one per origin. `seen`: each forwarded request's line, and its head and body."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0

    def start(self) -> ForwardProxy:
        ready = threading.Event()

        def serve_forever() -> None:
            server = self.loop.run_until_complete(asyncio.start_server(self.serve, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve_forever, name="forward-proxy", daemon=True)
        self.thread.start()
        assert ready.wait(10), "the proxy did not start"
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def requests(self) -> list[bytes]:
        return [request for _, request in list(self.seen)]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        answers: asyncio.Task[None] | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, _, rest = head.partition(b"\r\n")
                method, target, version = line.split(b" ")
                if method == b"CONNECT":
                    host, port = target.decode().rsplit(":", 1)
                    up_reader, upstream = await asyncio.open_connection(host, int(port))
                    self.seen.append((line.decode(), b""))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await asyncio.gather(self.pipe(reader, upstream), self.pipe(up_reader, writer))
                    return
                length = next((int(h.split(b":", 1)[1]) for h in rest.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                url = urlsplit(target.decode())
                if upstream is None:
                    up_reader, upstream = await asyncio.open_connection(url.hostname, url.port or 80)
                    answers = asyncio.create_task(self.pipe(up_reader, writer))
                origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
                upstream.write(b" ".join([method, origin.encode(), version]) + b"\r\n" + rest + body)
                self.seen.append((line.decode(), head + body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection: so does the proxy, upstream too
        finally:
            if answers is not None:
                answers.cancel()
            for w in (upstream, writer):
                if w is not None:
                    w.close()

    @staticmethod
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()


@pytest.fixture(scope="module")
def proxy() -> Iterator[ForwardProxy]:
    running = ForwardProxy().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stack_proxied(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any,
                  proxy: ForwardProxy) -> Iterator[FamiliesStack]:
    from django.db import connection

    from tests.stack import database_url

    config = tmp_path_factory.mktemp("proxied") / "llm.yaml"
    config.write_text(config_yaml())
    stack = FamiliesStack(database_url(connection.settings_dict), config)
    # Only the worker calls providers; the simulator is on 127.0.0.1, which nothing bypasses here.
    # (An empty lower-case variable unsets its upper-case one for urllib: both are given.)
    url = f"http://127.0.0.1:{proxy.port}"
    stack.extra_env.update({"HTTP_PROXY": url, "http_proxy": url, "HTTPS_PROXY": "", "https_proxy": "",
                            "ALL_PROXY": "", "all_proxy": "", "NO_PROXY": "", "no_proxy": ""})
    running = stack.start()
    try:
        yield running
    finally:
        running.stop()


families = pytest.mark.parametrize("family", list(FAMILIES))


@families
def test_each_family_streams_through_the_proxy(stack_proxied, proxy, alice, family):
    client = Client(stack_proxied.web_url, alice.key)
    key = f"proxied-{family}-{uuid.uuid4()}"

    task = streamed_answer(client, family, key)

    ((line, request),) = [(line, request) for line, request in list(proxy.seen) if key.encode() in request]
    path = urlsplit(stack_proxied.env()[f"SIM_BASE_{family.upper()}"]).path
    assert line.startswith(f"POST {stack_proxied.sim_url}{path}")  # absolute form: sent to the proxy
    # The direct stream's request (it asks for no compression), not litellm's.
    assert b"\r\naccept-encoding: identity\r\n" in request.lower()
    (record,) = sim_requests(stack_proxied, key)
    assert record["status"] == "completed" and record.get("family") == (None if family == "openai" else family)
    assert task["result"]["usage"]["completion_tokens"] > 0 and task["result"]["cost_usd"] > 0


@pytest.mark.parametrize("family", ["cohere", "anthropic"])
def test_cancel_through_the_proxy_closes_the_providers_stream(stack_proxied, proxy, alice, family):
    client = Client(stack_proxied.web_url, alice.key)
    key = f"proxied-cancel-{family}-{uuid.uuid4()}"

    record = cancel_mid_stream(stack_proxied, client, FAMILIES[family][0], key)

    assert record["status"] == "client_closed" and record["tokens_sent"] < record["tokens_planned"]
    assert any(key.encode() in request for request in proxy.requests())


def test_a_providers_error_through_the_proxy_is_read_as_the_familys_error(stack_proxied, proxy, charlie):
    from routing.models import CompanyRoutingPolicy

    CompanyRoutingPolicy.objects.update_or_create(company_id=charlie.tenant.company_id,
                                                  defaults={"policy": {"explicit_fallbacks": True}})
    model, _, _, sim_name = FAMILIES["cohere"]
    client = Client(stack_proxied.web_url, charlie.key)
    key = f"proxied-fallback-{uuid.uuid4()}"

    task, events = run(client, "hello", model=model,
                       context={"additionalContext": sim(tokens=4, error=429, fail_models=[sim_name], key=key)})

    assert task["status"] == "completed", task["error"]
    (hop,) = [e["detail"] for e in events if e["type"] == "step" and e["name"] == "fallback"]
    assert (hop["from"], hop["error"]) == (model, "rate_limited") and hop["to"] != model
    failed, served = sim_requests(stack_proxied, key)
    assert (failed["http_status"], served["status"]) == (429, "completed")
    assert sum(key.encode() in request for request in proxy.requests()) == 2
