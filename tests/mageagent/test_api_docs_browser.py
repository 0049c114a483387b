"""The API docs in a real browser with the network cut: headless Chromium whose only reachable
server is the service (every other host goes to a proxy that does not exist)."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest

from tests.clients import API

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(url: str, profile: str) -> str:
    """The page's DOM once its scripts ran, as Chromium renders it offline."""
    # Loopback is never proxied, so the service answers; any other host (a CDN) fails at once.
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=20000",
            "--dump-dom", url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it as root)")
def test_swagger_ui_renders_every_operation_offline(stack, tmp_path):
    dom = rendered_dom(f"{stack.web_url}{API}/docs", str(tmp_path))

    schema = httpx.get(f"{stack.web_url}{API}/schema?format=json").json()
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert rendered == set(schema["paths"])
    assert "Enqueue a task" in dom
    assert "btn authorize" in dom  # the Authorize button: the schema has security schemes


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it as root)")
def test_redoc_renders_the_operations_and_the_streaming_protocols_offline(stack, tmp_path):
    dom = rendered_dom(f"{stack.web_url}{API}/redoc", str(tmp_path))

    for text in ("Enqueue a task", "Follow a task as Server-Sent Events", "Multiplexed WebSocket", "Socket.IO"):
        assert text in dom, text
