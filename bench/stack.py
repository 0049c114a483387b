"""The real stack for the benchmark, as separate processes: the LLM simulator, daphne and
Celery worker(s), on PostgreSQL + Redis when they answer on their standard ports (or the
URLs given in DATABASE_URL / REDIS_URL), else SQLite + a private redis-server.

Isolation from whatever else runs on the machine (test suites, a developer's stack): a
dedicated database (`mageagent_bench`, re-created from a migrated template for every stack
start, so each run starts from an empty task table), a dedicated Redis database number,
and a queue name of its own. Every MAGEAGENT_* / DJANGO_* variable of the calling
environment is dropped, so a configuration is exactly what the benchmark says it is.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from devtools.infra import free_port, postgres_answers, redis_answers, start_private_redis

from .procs import descendants

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Config:
    """One configuration of the service under test."""

    name: str
    title: str
    env: dict[str, str] = field(default_factory=dict)
    worker_args: tuple[str, ...] = ()


CONFIGS = {
    # The application's own defaults: nothing is overridden, so tuning the defaults is
    # what the benchmark measures.
    "ours": Config("ours", "this project's defaults"),
    # The seed's configuration: Celery prefork, concurrency 10, every token its own event.
    "seed": Config(
        "seed", "seed configuration (Celery prefork, concurrency 10, no chunk coalescing)",
        env={"MAGEAGENT_WORKER_POOL": "prefork", "MAGEAGENT_WORKER_CONCURRENCY": "10",
             "MAGEAGENT_CHUNK_COALESCE_MS": "0"},
        worker_args=("-P", "prefork", "-c", "10"),
    ),
}


def _pg(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


# --- infrastructure: database server and Redis --------------------------------------------------
@dataclass
class Infra:
    db_kind: str  # postgres | sqlite
    admin_url: str  # postgres: a URL to the "postgres" maintenance database
    db_name: str  # postgres: database name; sqlite: file path
    redis_url: str
    redis_pid: int | None
    private_redis: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mageagent-bench-")))
    flush_redis: bool = True
    keep_template: bool = False  # keep the migrated template for the next invocation
    other_key: str = ""  # another company's key (the fairness scenario)

    @property
    def template(self) -> str:
        return f"{self.db_name}_tpl" if self.db_kind == "postgres" else f"{self.db_name}.tpl"

    def database_url(self, name: str | None = None) -> str:
        name = name or self.db_name
        if self.db_kind == "sqlite":
            return f"sqlite:///{name}"
        u = urlparse(self.admin_url)
        return u._replace(path=f"/{name}").geturl()

    def describe(self) -> str:
        if self.db_kind == "postgres":
            u = urlparse(self.admin_url)
            db = f"PostgreSQL {u.hostname}:{u.port or 5432}/{self.db_name}"
        else:
            db = f"SQLite {self.db_name}"
        return f"{db}; Redis {self.redis_url}" + (" (private)" if self.private_redis else "")

    def close(self) -> None:
        if self.db_kind == "postgres":
            import psycopg

            try:
                with psycopg.connect(_pg(self.admin_url), autocommit=True) as conn:
                    for name in (self.db_name, *(() if self.keep_template else (self.template,))):
                        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # pragma: no cover - best effort clean-up
                print(f"bench: could not drop the bench databases: {exc}", file=sys.stderr)
        if self.private_redis is not None:
            self.private_redis.terminate()
            self.private_redis.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def infra_setup(*, db_name: str, redis_db: int, flush_redis: bool = True) -> Infra:
    """Find PostgreSQL and Redis (env URLs first, then standard local ports), else fall back
    to SQLite and a private redis-server."""
    db_url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
    admin = urlparse(db_url)._replace(path="/postgres").geturl() if db_url.startswith("postgres") else ""
    workdir = Path(tempfile.mkdtemp(prefix="mageagent-bench-"))
    if admin and postgres_answers(_pg(admin)):
        kind, name = "postgres", db_name
    else:
        kind, name, admin = "sqlite", str(workdir / f"{db_name}.sqlite3"), ""

    redis_env = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    r = urlparse(redis_env)
    host, port = r.hostname or "127.0.0.1", r.port or 6379
    private = None
    if not redis_answers(host, port):
        private, port = _start_private_redis(workdir)
        host = "127.0.0.1"
    redis_url = f"redis://{host}:{port}/{redis_db}"
    infra = Infra(kind, admin, name, redis_url, _redis_pid(redis_url), private, workdir, flush_redis)
    # A shared, long-lived template only for the standing benchmark database (not the
    # smoke test's per-run databases).
    infra.keep_template = kind == "postgres" and flush_redis
    return infra


def _start_private_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    return start_private_redis(workdir)


def _redis_pid(redis_url: str) -> int | None:
    import redis

    try:
        pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    except Exception:
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The calling environment without any MageAgent/Django setting (the benchmark sets them)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAGEAGENT_", "DJANGO_", "CELERY_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"DJANGO_SETTINGS_MODULE": "mageagent.settings", "DJANGO_DEBUG": "false",
                "DJANGO_SECRET_KEY": "bench-not-secret", "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "PYTHONUNBUFFERED": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                # Event logs of finished tasks need not outlive the benchmark.
                "MAGEAGENT_EVENT_TTL": "900"})
    env.update(extra or {})
    return env


def _migrations_hash() -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("*/migrations/*.py")) + sorted(ROOT.glob("mageagent/*/migrations/*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def template_prepare(infra: Infra, env: dict[str, str], log: Path) -> str:
    """A migrated template database holding the benchmark's API key; returns the raw key.
    On PostgreSQL the template is kept between invocations while the migrations are
    unchanged (its comment holds their hash and the key), which saves two Django start-ups."""
    url = infra.database_url(infra.template)
    stamp = _migrations_hash()
    if infra.db_kind == "postgres":
        import psycopg

        with psycopg.connect(_pg(infra.admin_url), autocommit=True) as conn:
            row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                               (infra.template,)).fetchone()
            if row and row[0] and row[0].startswith(f"bench {stamp} ") and len(row[0].split()) == 4:
                infra.keep_template = True
                key, infra.other_key = row[0].split()[2:]
                return key
            conn.execute(f'DROP DATABASE IF EXISTS "{infra.template}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{infra.template}"')
    else:
        Path(infra.template).unlink(missing_ok=True)
    env = {**env, "DATABASE_URL": url, "REDIS_URL": infra.redis_url}
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                       stdout=out, stderr=subprocess.STDOUT, check=True)
        # The benchmark's key, and another company's for the fairness scenario.
        key, infra.other_key = (_api_key_create(env, out, company) for company in ("bench", "bench-other"))
    if infra.db_kind == "postgres" and infra.keep_template:
        import psycopg

        with psycopg.connect(_pg(infra.admin_url), autocommit=True) as conn:
            conn.execute(f"COMMENT ON DATABASE \"{infra.template}\" IS 'bench {stamp} {key} {infra.other_key}'")
    return key


def _api_key_create(env: dict[str, str], log: Any, company: str) -> str:
    made = subprocess.run([sys.executable, "manage.py", "create_api_key", "--company", company, "--app", "bench"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, check=True, text=True)
    lines = [line.strip() for line in made.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("create_api_key printed no key")
    return lines[-1]


def db_fresh(infra: Infra) -> str:
    """An empty, migrated database (a copy of the template); returns its URL."""
    if infra.db_kind == "postgres":
        import psycopg

        with psycopg.connect(_pg(infra.admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{infra.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{infra.db_name}" TEMPLATE "{infra.template}"')
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(infra.db_name + suffix).unlink(missing_ok=True)
        shutil.copyfile(infra.template, infra.db_name)
    if infra.flush_redis:
        import redis

        redis.Redis.from_url(infra.redis_url).flushdb()
    return infra.database_url()


# --- the service's processes ---------------------------------------------------------------------
class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.out = open(log, "ab")  # closed in stop()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        family = descendants(self.proc.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in family[1:]:  # children this process started (prefork pool) must not linger
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.out.close()


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_ready(check: Any, what: str, deadline: float, procs: list[Proc]) -> None:
    """Poll `check` until it is true; fail when one of `procs` exits or at `deadline`."""
    while not check():
        for proc in procs:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited (rc={proc.proc.returncode}):\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready:\n" +
                               "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in procs))
        time.sleep(0.1)


class BenchStack:
    """simulator + daphne + Celery worker(s) for one configuration."""

    def __init__(self, infra: Infra, config: Config, *, db_url: str, logdir: Path, workers: int = 1,
                 extra_env: dict[str, str] | None = None, tag: str = "", web_processes: int = 1) -> None:
        self.infra, self.config, self.db_url, self.logdir = infra, config, db_url, logdir
        self.workers = workers if config.name == "ours" else 1
        self.extra_env = extra_env or {}
        self.web_processes = web_processes
        self.tag = tag or config.name
        self.procs: dict[str, Proc] = {}
        self.sim_url = self.web_url = ""
        self.queue = f"mageagent-bench-{os.getpid()}"
        self.worker_banner = ""

    def env(self) -> dict[str, str]:
        return base_env({"DATABASE_URL": self.db_url, "REDIS_URL": self.infra.redis_url,
                         "MAGEAGENT_QUEUE": self.queue, "MAGEAGENT_LLM_API_BASE": f"{self.sim_url}/v1",
                         **self.extra_env, **self.config.env})

    def start(self, timeout: float = 90.0) -> BenchStack:
        sim_port, web_port = free_port(), free_port()
        self.sim_url, self.web_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{web_port}"
        env = self.env()
        log = self.logdir
        self.procs["simulator"] = Proc("simulator", [sys.executable, "devtools/simulator/server.py", "--port",
                                                     str(sim_port)], env, log / f"{self.tag}-simulator.log")
        web = ([str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(web_port), "mageagent.asgi:application"]
               if self.web_processes == 1 else
               [sys.executable, "-m", "mageagent.web", "-b", "127.0.0.1", "-p", str(web_port),
                "--processes", str(self.web_processes)])
        self.procs["web"] = Proc("web", web, env, log / f"{self.tag}-web.log")
        for i in range(self.workers):
            name = "worker" if i == 0 else f"worker{i + 1}"
            argv = [str(BIN / "celery"), "-A", "mageagent", "worker", "-n", f"bench-{self.tag}-{i}-{os.getpid()}@%h",
                    "--without-mingle", "--without-gossip", *self.config.worker_args]
            self.procs[name] = Proc(name, argv, env, log / f"{self.tag}-{name}.log")
        deadline = time.monotonic() + timeout
        self._wait(lambda: _get(f"{self.sim_url}/_sim/health")[0] == 200, "simulator", deadline)
        self._wait(lambda: _get(f"{self.web_url}/healthz")[0] == 200, "web", deadline)
        self._wait(lambda: _get(f"{self.web_url}/readyz")[0] == 200, "worker", deadline)
        self._wait(self._workers_ready, "worker pool", deadline)
        return self

    def _workers_ready(self) -> bool:
        """Every worker has its runtime's heartbeat in Redis and, for prefork, its pool forked."""
        import redis

        roots = [p.pid for name, p in self.procs.items() if name.startswith("worker")]
        trees = [descendants(pid) for pid in roots]
        if "prefork" in self.config.worker_args and any(len(t) < 1 + self._concurrency() for t in trees):
            return False
        # WORKER_ID is "host:pid:nonce", the pid of the process that imported the module.
        beating = set()
        for key in redis.Redis.from_url(self.infra.redis_url).scan_iter(match="ma:worker:*", count=1000):
            parts = key.decode().split(":")
            if len(parts) >= 4 and parts[-2].isdigit():
                beating.add(int(parts[-2]))
        if not all(beating & set(t) for t in trees):
            return False
        m = re.search(r"concurrency:\s*(.+)", self.procs["worker"].tail(20000))
        self.worker_banner = m.group(1).strip() if m else ""
        return True

    def _concurrency(self) -> int:
        args = list(self.config.worker_args)
        return int(args[args.index("-c") + 1]) if "-c" in args else 1

    def _wait(self, check: Any, what: str, deadline: float) -> None:
        wait_ready(check, what, deadline, list(self.procs.values()))

    def pids(self) -> dict[str, Any]:
        """What the load generator measures: root pids per group (workers with their children)."""
        return {
            "web": {"pids": [self.procs["web"].pid], "tree": self.web_processes > 1},
            "worker": {"pids": [p.pid for n, p in self.procs.items() if n.startswith("worker")], "tree": True},
            "simulator": {"pids": [self.procs["simulator"].pid], "tree": False},
            "redis": {"pids": [self.infra.redis_pid] if self.infra.redis_pid else [], "tree": False},
        }

    def wait_idle(self, *, cpu_share: float = 0.15, window: float = 1.0, timeout: float = 45.0) -> float:
        """Wait until the web and worker processes are idle (start-up imports, forks and
        warm-up done): their CPU over `window` seconds below `cpu_share` of a core."""
        from .procs import ProcGroups, cpu_delta

        groups = ProcGroups()
        for name, g in self.pids().items():
            if name in ("web", "worker"):
                groups.add(name, g["pids"], tree=g["tree"])
        t0 = time.monotonic()
        before = groups.snapshot(with_rss=False)
        while time.monotonic() - t0 < timeout:
            time.sleep(window)
            after = groups.snapshot(with_rss=False)
            if sum(cpu_delta(before, after).values()) < cpu_share * window:
                break
            before = after
        return time.monotonic() - t0

    def alive(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.proc.poll() is not None]

    def stop(self) -> None:
        """Stop every process this stack started (also after a failed or interrupted start)."""
        # Workers first (cold shutdown: the benchmark has cancelled or finished its tasks),
        # then the web, then the simulator.
        for name in [n for n in self.procs if n.startswith("worker")]:
            self.procs[name].stop(signal.SIGQUIT, timeout=15)
        for name in ("web", "simulator"):
            if name in self.procs:
                self.procs[name].stop()
        self.procs.clear()
