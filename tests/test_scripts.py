"""The README's first command, run for real: scripts/run.sh starts the whole service, a task
runs through it over HTTP, and Ctrl-C (SIGINT) stops every process it started."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.clients import Client, answer_from_chunks, sim
from tests.infra import free_port

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "COHERE_API_KEY", "OPENROUTER_API_KEY",
                 "MISTRAL_API_KEY", "DEEPSEEK_API_KEY", "XAI_API_KEY", "GROQ_API_KEY", "TOGETHERAI_API_KEY",
                 "TOGETHER_AI_API_KEY", "DEEPINFRA_API_KEY", "PERPLEXITYAI_API_KEY", "FIREWORKS_AI_API_KEY",
                 "AZURE_API_KEY", "AWS_ACCESS_KEY_ID", "MAGEAGENT_LLM_API_BASE", "MAGEAGENT_LLM_CONFIG")


class Output:
    """The script's output, read as it comes (a full pipe would block it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, proc: subprocess.Popen[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text, re.MULTILINE)
            if match:
                return match
            if proc.poll() is not None:
                self._thread.join(5)
                match = re.search(pattern, self.text, re.MULTILINE)
                if match:
                    return match
                pytest.fail(f"run.sh exited ({proc.returncode}) before printing {pattern!r}:\n{self.text}")
            time.sleep(0.2)
        pytest.fail(f"run.sh did not print {pattern!r} within {timeout}s:\n{self.text}")


def run_env(var_dir: Path, web_port: int, flower_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS and k != "DATABASE_URL"}
    # Its own Redis database: the e2e stack's worker consumes the test database's queue and
    # would take this service's tasks (whose rows live in this run's SQLite file).
    base = os.environ["REDIS_URL"].rsplit("/", 1)[0]
    env.update({
        "REDIS_URL": f"{base}/11", "MAGEAGENT_VAR_DIR": str(var_dir), "MAGEAGENT_PORT": str(web_port),
        "MAGEAGENT_FLOWER_PORT": str(flower_port), "MAGEAGENT_VENV": sys.prefix,
        "FLOWER_BASIC_AUTH": "ops:secret", "DJANGO_SETTINGS_MODULE": "mageagent.settings",
        "MAGEAGENT_STOP_TIMEOUT": "30",
    })
    return env


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_run_sh_starts_the_service_runs_a_task_and_stops_everything_on_ctrl_c(tmp_path):
    web_port, flower_port = free_port(), free_port()
    stamp = Path(sys.prefix) / ".mageagent-requirements.txt.sha256"
    wanted = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()
    venv_was_complete = stamp.exists() and stamp.read_text().strip() == wanted
    proc = subprocess.Popen(["bash", "scripts/run.sh"], cwd=ROOT, env=run_env(tmp_path, web_port, flower_port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = Output(proc)
    try:
        key = out.wait_for(r"^\s*API key\s+(mk_\S+)$", proc, timeout=300).group(1)
        if venv_was_complete:  # as after scripts/test.sh: no reinstall
            assert "python packages up to date" in out.text
        assert stamp.exists()
        assert "LLM SIMULATOR" in out.text  # no provider configured, and it says so
        assert re.search(r"^\s*Tools\s+(all available|OFF: .+)", out.text, re.M)  # which tools are off, and why
        api = f"http://127.0.0.1:{web_port}/mageagent/api/v1"
        for url in (f"{api}/", f"{api}/docs", f"http://127.0.0.1:{web_port}/admin/", f"http://127.0.0.1:{web_port}/console/",
                    f"http://127.0.0.1:{flower_port}/", f"http://127.0.0.1:{web_port}/healthz"):
            assert url in out.text
        curl = out.wait_for(r"^\s*(curl -sN .+/stream\")$", proc, timeout=5).group(1)
        assert key in curl

        client = Client(f"http://127.0.0.1:{web_port}", key)
        task = client.create(f"Say hi {sim(text='hello from run.sh', interval_ms=5)}")
        read = client.sse(task["id"], timeout=60)
        assert read.ended
        assert answer_from_chunks([e.data for e in read.events]) == "hello from run.sh"
        assert client.get(task["id"])["status"] == "completed"

        # Flower watches the same broker and knows the task by its stable name.
        workers = httpx.get(f"http://127.0.0.1:{flower_port}/api/workers", params={"refresh": "1"},
                            auth=("ops", "secret"), timeout=30).json()
        assert any("mageagent.task.execute" in w.get("registered", []) for w in workers.values()), workers

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 130
        out.wait_for(r"==> stopped$", proc, timeout=5)
        deadline = time.monotonic() + 10
        while process_group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_group_alive(proc.pid), "a child of run.sh outlived it"
        assert not list((tmp_path / "run").glob("*.pid"))
    finally:
        if process_group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
