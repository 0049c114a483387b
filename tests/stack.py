"""The real service as processes, for end-to-end tests: the LLM simulator, daphne and a
Celery worker, sharing the test database and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.infra import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def database_url(settings_dict: dict[str, Any]) -> str:
    if "sqlite" in settings_dict["ENGINE"]:
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or "postgres"
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"


def own_queue(name: str) -> str:
    """A Celery queue for one stack of its own: the session stack's worker, with other settings,
    must not take its tasks (and it must not take the session stack's)."""
    return f"{os.environ.get('MAGEAGENT_QUEUE', 'mageagent')}-{name}-{uuid.uuid4().hex[:6]}"


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], stop_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.log = tempfile.NamedTemporaryFile(prefix=f"mageagent-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Stack:
    def __init__(self, db_url: str, extra_env: dict[str, str] | None = None) -> None:
        self.db_url = db_url
        self.extra_env = extra_env or {}
        self.processes: dict[str, Process] = {}
        self.sim_url = ""
        self.web_url = ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DATABASE_URL": self.db_url, "DJANGO_SETTINGS_MODULE": "mageagent.settings",
                    "MAGEAGENT_LLM_API_BASE": f"{self.sim_url}/v1", "PYTHONUNBUFFERED": "1",
                    "MAGEAGENT_WORKER_HEARTBEAT_S": "1"})
        env.update(self.extra_env)
        return env

    def start(self) -> Stack:
        sim_port, web_port = free_port(), free_port()
        self.sim_url, self.web_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{web_port}"
        env = self.env()
        self.processes["simulator"] = Process(
            "simulator", [sys.executable, "devtools/simulator/server.py", "--port", str(sim_port)], env)
        self.processes["web"] = self.web_process("web", web_port, env)
        self.start_worker("worker")
        self.wait_until(lambda: self._answers(f"{self.sim_url}/_sim/health"), "simulator")
        self.wait_until(lambda: self._answers(f"{self.web_url}/healthz"), "web")
        self.wait_until(lambda: self._answers(f"{self.web_url}/readyz"), "worker")
        return self

    def web_process(self, name: str, port: int, env: dict[str, str]) -> Process:
        argv = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "mageagent.asgi:application"]
        return Process(name, argv, env)

    def start_extra_web(self, name: str, extra_env: dict[str, str]) -> str:
        """Another web process on the same stack with different settings; returns its URL."""
        port = free_port()
        self.processes[name] = self.web_process(name, port, {**self.env(), **extra_env})
        url = f"http://127.0.0.1:{port}"
        self.wait_until(lambda: self._answers(f"{url}/healthz"), name)
        return url

    def stop_process(self, name: str) -> None:
        self.processes.pop(name).stop()

    def start_worker(self, name: str, concurrency: int = 100) -> Process:
        argv = [str(BIN / "celery"), "-A", "mageagent", "worker", "-l", "INFO", "-P", "threads",
                "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h", "--without-mingle", "--without-gossip"]
        # SIGQUIT: Celery's cold shutdown; a test has no use for waiting on running tasks.
        self.processes[name] = Process(name, argv, self.env(), stop_signal=signal.SIGQUIT)
        return self.processes[name]

    def wait_until(self, check: Any, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for proc in self.processes.values():
                if proc.proc.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not become ready:\n" + self.logs())
            time.sleep(0.1)

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.processes.values())

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()
