"""The SSE stream read by the clients people use: httpx-sse, sseclient-py, the openai SDK's
stream decoder and a browser's EventSource (headless Chromium). Each must see the task's
events, in order, exactly as the log holds them: no empty event (a block with a field but
no data is one to httpx-sse and the openai SDK), nothing missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
import sseclient
from httpx_sse import connect_sse

from tests.clients import API, Client, answer_from_chunks, sim, tokens
from tests.infra import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

NAMED = ("status", "step", "tool_call", "tool_result", "reset")  # every type but chunk and done


@pytest.fixture
def client(stack, alice) -> Client:
    return Client(stack.web_url, alice.key)


def stream_url(client: Client, task_id: str) -> str:
    return f"{client.base_url}{API}/tasks/{task_id}/stream"


def read_with_httpx_sse(client: Client, task_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    with httpx.Client(timeout=60) as http, connect_sse(
            http, "GET", stream_url(client, task_id), headers={"Authorization": f"Bearer {client.key}"}) as source:
        for sse in source.iter_sse():
            out.append((sse.id, sse.event, sse.json()))
    return out


def read_with_sseclient(client: Client, task_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {client.key}", "Accept": "text/event-stream"}
    with httpx.Client(timeout=60) as http, http.stream("GET", stream_url(client, task_id), headers=headers) as response:
        return [(e.id, e.event, json.loads(e.data)) for e in sseclient.SSEClient(response.iter_bytes()).events()]


def read_with_openai(client: Client, task_id: str) -> list[dict[str, Any]]:
    # The SDK's public way to an endpoint it has no method for: get(..., stream=True) decodes
    # the body with its SSE decoder and json-loads each event's data.
    sdk = openai.OpenAI(api_key=client.key or "", base_url=f"{client.base_url}{API}", max_retries=0, timeout=60)
    with sdk.get(f"/tasks/{task_id}/stream", cast_to=object, stream=True,
                 stream_cls=openai.Stream[object]) as stream:
        return list(stream)


PAGE = """<!doctype html><script>
const seen = [];
const source = new EventSource(%(url)s);
function keep(e) {
  const data = JSON.parse(e.data);
  seen.push({id: e.lastEventId, event: e.type, data: data});
  if (data.type === 'done') {
    source.close();
    fetch('/result', {method: 'POST', body: JSON.stringify(seen)});
  }
}
source.onmessage = keep;
for (const name of %(named)s) source.addEventListener(name, keep);
source.onerror = () => fetch('/result', {method: 'POST', body: JSON.stringify({error: true, seen: seen})});
</script>"""


def read_with_chromium(client: Client, task_id: str) -> list[dict[str, Any]]:
    """Open a page (served here) in headless Chromium whose EventSource follows the stream
    with ?token= as a browser must, and posts back what it saw once `done` arrived."""
    url = f"{stream_url(client, task_id)}?token={client.key}"
    page = (PAGE % {"url": json.dumps(url), "named": json.dumps(NAMED)}).encode()
    posted: list[bytes] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def do_POST(self) -> None:
            posted.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="mageagent-chromium-")
    # Root needs --no-sandbox. The page's origin is this test server, the stream another
    # port: the service sends no CORS headers, so the browser is told not to enforce them.
    browser = subprocess.Popen(
        [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-web-security", f"--user-data-dir={profile}", "--no-first-run",
         f"http://127.0.0.1:{server.server_address[1]}/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert arrived.wait(90), "the page posted nothing back"
    finally:
        browser.kill()
        browser.wait(10)
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    seen = json.loads(posted[0])
    assert not isinstance(seen, dict), f"EventSource failed: {seen}"
    return seen


def in_threads(*readers: Callable[[], Any]) -> list[Any]:
    results: list[Any] = [None] * len(readers)
    errors: list[BaseException] = []

    def run(i: int, reader: Callable[[], Any]) -> None:
        try:
            results[i] = reader()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    return results


def test_httpx_sse_sseclient_and_the_openai_sdk_read_every_event_exactly(client):
    task = client.create(f"every client {sim(tokens=40, interval_ms=10)}")

    # Followed live, side by side, while the task runs.
    by_httpx_sse, by_sseclient, by_openai = in_threads(
        lambda: read_with_httpx_sse(client, task["id"]),
        lambda: read_with_sseclient(client, task["id"]),
        lambda: read_with_openai(client, task["id"]))

    log = client.events(task["id"])["events"]
    assert [data for _, _, data in by_httpx_sse] == log
    assert [data for _, _, data in by_sseclient] == log
    assert by_openai == log
    # `id:` is the seq; chunk and done are unnamed ("message"), the rest named by their type
    for read in (by_httpx_sse, by_sseclient):
        assert [(sse_id, event) for sse_id, event, _ in read] == [
            (str(e["seq"]), "message" if e["type"] in ("chunk", "done") else e["type"]) for e in log]
    assert answer_from_chunks(log) == tokens(40) == client.get(task["id"])["result"]["content"]


def test_a_client_resuming_at_the_logs_end_reads_only_what_follows(client):
    task = client.create(f"resume at the end {sim(tokens=3)}")
    log = client.wait_terminal(task["id"]) and client.events(task["id"])["events"]

    # Only `done` is left: the response must not open with anything else these parse as an event.
    with httpx.Client(timeout=60) as http, connect_sse(
            http, "GET", stream_url(client, task["id"]),
            headers={"Authorization": f"Bearer {client.key}", "Last-Event-ID": str(len(log) - 1)}) as source:
        tail = [sse.json() for sse in source.iter_sse()]

    assert tail == log[-1:]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (scripts/test.sh installs it)")
def test_a_browsers_event_source_reads_every_event_exactly(client):
    task = client.create(f"browser {sim(tokens=40, interval_ms=10, ttft_ms=300)}")

    seen = read_with_chromium(client, task["id"])

    log = client.events(task["id"])["events"]
    assert [e["data"] for e in seen] == log
    assert [(e["id"], e["event"]) for e in seen] == [
        (str(e["seq"]), "message" if e["type"] in ("chunk", "done") else e["type"]) for e in log]
    assert answer_from_chunks([e["data"] for e in seen]) == tokens(40)
