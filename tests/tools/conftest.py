from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.providers import providers_app
from tests.fakes.server import FakeServer


@pytest.fixture(scope="session")
def fake_services() -> Iterator[FakeServer]:
    """SearxNG, Brave, Tavily, a GraphRAG service and a small web site, on 127.0.0.1."""
    server = FakeServer(providers_app()).start()
    yield server
    server.stop()


@pytest.fixture
def knobs(settings: Any) -> Iterator[Callable[..., None]]:
    """Overrides MAGEAGENT settings for one test (pytest-django restores them)."""
    from tools.sandbox import sandbox_unavailable_reason

    def configure(*presets: dict[str, Any], **values: Any) -> None:
        for preset in presets:
            values = {**preset, **values}
        settings.MAGEAGENT = {**settings.MAGEAGENT, **values}
        sandbox_unavailable_reason.cache_clear()

    yield configure
    sandbox_unavailable_reason.cache_clear()


@pytest.fixture(scope="session")
def simulator() -> Iterator[str]:
    """The LLM simulator as a process (what the summarize operation talks to)."""
    import subprocess
    import sys
    import time

    import httpx

    from tests.infra import free_port
    from tests.stack import ROOT

    port = free_port()
    proc = subprocess.Popen([sys.executable, "devtools/simulator/server.py", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/_sim/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the simulator did not start")
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)
