"""Tools tell the truth: a backend installed while the service runs (bubblewrap appearing
on the PATH) makes its tool available without a restart, once the re-check is due."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.sandbox import sandbox_unavailable_reason

API = "/mageagent/api/v1"


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    # Readable by everyone: as root the probe runs bwrap under a sandbox uid.
    path = Path(tempfile.mkdtemp(prefix="mageagent-bin-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def install_fake_bwrap(bin_dir: Path) -> None:
    """A 'bubblewrap' that succeeds at the probe's no-op run."""
    bwrap = bin_dir / "bwrap"
    bwrap.write_text("#!/bin/sh\nexit 0\n")
    bwrap.chmod(0o755)


def code_execution(api, persona) -> dict:
    tools = api.get(f"{API}/tools", headers=persona.headers).json()["results"]
    return next(t for t in tools if t["name"] == "code_execution")


needs_util_linux = pytest.mark.skipif(
    shutil.which("prlimit") is None or (os.geteuid() == 0 and shutil.which("setpriv") is None),
    reason="the probe also needs util-linux's prlimit (and setpriv as root)")


@needs_util_linux
@pytest.mark.django_db
def test_bubblewrap_installed_later_is_found_once_the_recheck_is_due(api, alice, knobs, settings, bin_dir):
    knobs(SANDBOX_BWRAP=str(bin_dir / "bwrap"), TOOLS_RECHECK_S=3600.0)
    before = code_execution(api, alice)
    install_fake_bwrap(bin_dir)
    held = code_execution(api, alice)

    settings.MAGEAGENT = {**settings.MAGEAGENT, "TOOLS_RECHECK_S": 0.0}  # the re-check is due
    after = code_execution(api, alice)

    assert before["available"] is False and "is not installed" in before["unavailable_reason"]
    assert held["available"] is False  # within the re-check interval the last probe stands
    assert after["available"] is True and after["unavailable_reason"] is None
    created = api.post(f"{API}/tasks", {"prompt": "hi", "tools": ["code_execution"]}, format="json",
                       headers=alice.headers)
    assert created.status_code == 202, created.json()


@needs_util_linux
def test_a_missing_backend_is_probed_again_after_the_interval(settings, bin_dir):
    settings.MAGEAGENT = {**settings.MAGEAGENT, "SANDBOX_BWRAP": str(bin_dir / "bwrap"), "TOOLS_RECHECK_S": 3600.0}
    sandbox_unavailable_reason.cache_clear()
    try:
        first = sandbox_unavailable_reason()
        (bin_dir / "bwrap").write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / "bwrap").chmod(0o755)
        held = sandbox_unavailable_reason()
        settings.MAGEAGENT = {**settings.MAGEAGENT, "TOOLS_RECHECK_S": 0.0}
        again = sandbox_unavailable_reason()
    finally:
        sandbox_unavailable_reason.cache_clear()

    assert first is not None and "is not installed" in first
    assert held == first
    assert again is not None and "is not installed" not in again  # probed again: now it ran, and failed
