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


def filesystem_storage(location: str) -> dict[str, Any]:
    return {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": location}}


def s3_storage(endpoint: str, bucket: str) -> dict[str, Any]:
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        "bucket_name": bucket, "endpoint_url": endpoint, "region_name": "us-east-1", "access_key": "testing",
        "secret_key": "testing", "file_overwrite": False, "default_acl": None}}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """An S3-compatible server (moto's) on 127.0.0.1, spoken to over real HTTP."""
    from moto.server import ThreadedMotoServer

    from tests.infra import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_bucket(endpoint: str) -> str:
    import uuid

    import boto3

    bucket = f"mageagent-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def files_storage(settings: Any, tmp_path: Any) -> Callable[[dict[str, Any]], None]:
    """Points the "files" storage somewhere for one test (pytest-django restores it)."""

    def configure(storage: dict[str, Any]) -> None:
        settings.STORAGES = {**settings.STORAGES, "files": storage}

    configure(filesystem_storage(str(tmp_path / "files")))
    return configure

