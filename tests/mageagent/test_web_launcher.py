"""python -m mageagent.web: several daphne processes on one socket, supervised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.procs import descendants
from devtools.infra import free_port

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    return set(descendants(pid)) - {pid}


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def launcher(tmp_path):
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mageagent.settings",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    proc = subprocess.Popen([sys.executable, "-m", "mageagent.web", "-p", str(port), "--processes", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: _healthy(port) and len(_children(proc.pid)) == 2, 60, "two daphne processes serving")
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_two_daphne_processes_serve_one_port_and_a_dead_one_is_replaced(launcher):
    proc, port = launcher
    first = _children(proc.pid)
    victim = min(first)

    os.kill(victim, signal.SIGKILL)

    _until(lambda: len(_children(proc.pid)) == 2 and victim not in _children(proc.pid), 30, "a replacement")
    _until(lambda: _healthy(port), 30, "the service after the replacement")
    assert len(_children(proc.pid) & first) == 1


def test_sigterm_stops_every_daphne_and_the_launcher(launcher):
    proc, port = launcher
    children = _children(proc.pid)

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(30) == 0
    _until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10, "the children's exit")
    assert not _healthy(port)
