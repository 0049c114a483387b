"""`python -m bench soak --chaos --minutes N`: a steady load with a random fault every
`--every` seconds, and a report of what users would notice.

The stack is web + two workers + the simulator (no beat: the workers reconcile under their
lease), on a fresh PostgreSQL database of the shared server and a Redis of the soak's own
(AOF, noeviction: production's configuration), which the faults may kill. Faults: Redis
restarted with its data, Redis restarted empty, a worker SIGKILLed or SIGTERMed (and started
again, as its supervisor would), every database connection terminated for a few seconds,
and a provider storm (tasks whose first calls fail with 429/503, or whose stream drops).

Counted: tasks accepted (202), lost (never reached a terminal state within the drain), stuck
(still queued/processing at the end), answered twice (more than one `done` in their log),
requests answered 5xx, and per fault the seconds from its end until every task accepted
before that moment had ended.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from devtools.faults import PrivateRedis, terminate_backends
from devtools.infra import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
API = "/mageagent/api/v1"
TERMINAL = ("completed", "failed", "cancelled")
FAULTS = ("redis_restart", "redis_restart_empty", "worker_sigkill", "worker_sigterm", "db_terminate",
          "provider_storm")


@dataclass
class Soak:
    base_url: str = ""
    key: str = ""
    accepted: dict[str, float] = field(default_factory=dict)  # task id -> accepted at (monotonic)
    finished: dict[str, str] = field(default_factory=dict)  # task id -> terminal status
    status_counts: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    storm_until: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)  # the load and the faults
    polling: threading.Event = field(default_factory=threading.Event)  # set: the poller stops
    lock: threading.Lock = field(default_factory=threading.Lock)


def _proc(name: str, argv: list[str], env: dict[str, str], logdir: Path) -> subprocess.Popen[bytes]:
    log = open(logdir / f"{name}.log", "ab")  # the child writes to it until it exits
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _pg(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def _wait(check: Any, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready")
        time.sleep(0.3)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _prompt(soak: Soak) -> str:
    if time.monotonic() < soak.storm_until:
        key = uuid.uuid4().hex
        directive = random.choice([{"error": 429, "error_times": 2}, {"error": 503, "error_times": 2},
                                   {"fail_after_tokens": 10, "error_times": 1}])
        return f"storm [[sim {json.dumps({'tokens': 40, 'interval_ms': 50, 'key': key, **directive})}]]"
    return '[[sim {"tokens": 40, "interval_ms": 50}]] soak'


def _submitter(soak: Soak, rate: float) -> None:
    client = httpx.Client(base_url=soak.base_url, headers={"Authorization": f"Bearer {soak.key}"}, timeout=15)
    gap = 1.0 / rate
    next_at = time.monotonic()
    while not soak.stop.is_set():
        next_at += gap
        try:
            response = client.post(f"{API}/tasks", json={"prompt": _prompt(soak)})
            with soak.lock:
                soak.status_counts[response.status_code] = soak.status_counts.get(response.status_code, 0) + 1
                if response.status_code == 202:
                    soak.accepted[response.json()["id"]] = time.monotonic()
        except httpx.HTTPError:
            with soak.lock:
                soak.transport_errors += 1
        time.sleep(max(next_at - time.monotonic(), 0))


def _poll(soak: Soak, db_url: str) -> None:
    """Task states straight from the database (the ledger), once a second."""
    while not soak.polling.is_set():
        with soak.lock:
            open_ids = [i for i in soak.accepted if i not in soak.finished]
        try:
            with psycopg.connect(_pg(db_url), connect_timeout=3) as conn:
                rows = conn.execute("SELECT id::text, status FROM tasks_task WHERE id = ANY(%s::uuid[])",
                                    [open_ids]).fetchall()
            with soak.lock:
                for task_id, status in rows:
                    if status in TERMINAL:
                        soak.finished[task_id] = status
        except psycopg.Error:
            pass  # the database is down: the next round looks again
        time.sleep(1.0)


class Chaos:
    def __init__(self, soak: Soak, redis: PrivateRedis, workers: dict[str, subprocess.Popen[bytes]],
                 start_worker: Any, db_url: str, db_name: str) -> None:
        self.soak, self.redis, self.workers, self.start_worker = soak, redis, workers, start_worker
        self.db_url, self.db_name = db_url, db_name

    def inject(self, kind: str) -> None:
        if kind in ("redis_restart", "redis_restart_empty"):
            self.redis.restart(down_s=5, empty=kind == "redis_restart_empty")
        elif kind in ("worker_sigkill", "worker_sigterm"):
            name = random.choice(sorted(self.workers))
            proc = self.workers[name]
            proc.send_signal(signal.SIGKILL if kind == "worker_sigkill" else signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            self.workers[name] = self.start_worker(name)
        elif kind == "db_terminate":
            ends = time.monotonic() + 5
            while time.monotonic() < ends:
                terminate_backends(self.db_url, self.db_name)
                time.sleep(0.3)
        elif kind == "provider_storm":
            self.soak.storm_until = time.monotonic() + 10
            time.sleep(10)

    def run(self, every: float, kinds: tuple[str, ...]) -> None:
        while not self.soak.stop.wait(every):
            kind = random.choice(kinds)
            began = time.monotonic()
            self.inject(kind)
            ended = time.monotonic()
            with self.soak.lock:
                pending = [i for i, at in self.soak.accepted.items() if at <= ended and i not in self.soak.finished]
            fault = {"fault": kind, "at_s": round(began - START, 1), "took_s": round(ended - began, 1),
                     "open_tasks": len(pending), "recovery_s": None}
            self.soak.faults.append(fault)
            threading.Thread(target=self._recovery, args=(fault, pending, ended), daemon=True).start()

    def _recovery(self, fault: dict[str, Any], pending: list[str], since: float) -> None:
        deadline = since + 300
        while time.monotonic() < deadline:
            with self.soak.lock:
                if all(i in self.soak.finished for i in pending):
                    fault["recovery_s"] = round(time.monotonic() - since, 1)
                    return
            time.sleep(0.5)


START = time.monotonic()


def _log_dones(base_url: str, key: str, task_id: str) -> int:
    response = httpx.get(f"{base_url}{API}/tasks/{task_id}/events", params={"after": 0},
                         headers={"Authorization": f"Bearer {key}"}, timeout=15)
    if response.status_code != 200:
        return -1
    return sum(1 for e in response.json()["events"] if e["type"] == "done")


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    global START
    admin_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    db_name = f"mageagent_soak_{os.getpid()}"
    with psycopg.connect(_pg(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    db_url = admin_url.rsplit("/", 1)[0] + f"/{db_name}"
    redis = PrivateRedis(persist=True).start()
    logdir = Path(args.logdir or ROOT / "var" / "soak")
    logdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis.url, "DJANGO_SETTINGS_MODULE": "mageagent.settings",
           "PYTHONUNBUFFERED": "1", "MAGEAGENT_QUEUE": f"soak-{os.getpid()}", "MAGEAGENT_LLM_TIMEOUT_S": "10",
           "MAGEAGENT_RETRY_BACKOFF_S": "0.5"}
    procs: list[subprocess.Popen[bytes]] = []
    workers: dict[str, subprocess.Popen[bytes]] = {}
    soak = Soak()
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        out = subprocess.run([sys.executable, "manage.py", "create_api_key", "--company", "soak", "--app", "soak"],
                             cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
        soak.key = out.strip().splitlines()[-1]
        sim_port, web_port = free_port(), free_port()
        env["MAGEAGENT_LLM_API_BASE"] = f"http://127.0.0.1:{sim_port}/v1"
        procs.append(_proc("simulator", [sys.executable, "devtools/simulator/server.py", "--port", str(sim_port)],
                           env, logdir))
        procs.append(_proc("web", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(web_port),
                                   "mageagent.asgi:application"], env, logdir))
        soak.base_url = f"http://127.0.0.1:{web_port}"

        def start_worker(name: str) -> subprocess.Popen[bytes]:
            return _proc(name, [str(BIN / "celery"), "-A", "mageagent", "worker", "-l", "INFO", "-P", "threads",
                                "-c", "200", "-n", f"{name}-{os.getpid()}@%h", "--without-mingle",
                                "--without-gossip"], env, logdir)

        for name in ("worker-a", "worker-b"):
            workers[name] = start_worker(name)
        _wait(lambda: _answers(f"{soak.base_url}/readyz"), "the stack")

        START = time.monotonic()
        threads = [threading.Thread(target=_submitter, args=(soak, args.rate), daemon=True),
                   threading.Thread(target=_poll, args=(soak, db_url), daemon=True)]
        if args.chaos:
            chaos = Chaos(soak, redis, workers, start_worker, db_url, db_name)
            threads.append(threading.Thread(target=chaos.run, args=(args.every, tuple(args.faults)), daemon=True))
        for thread in threads:
            thread.start()
        time.sleep(args.minutes * 60)
        soak.stop.set()
        threads[0].join(20)  # no task is submitted after this
        # Drain: every accepted task gets up to --drain seconds to end.
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline and len(soak.finished) < len(soak.accepted):
            time.sleep(1)
        soak.polling.set()
        threads[1].join(5)
        with soak.lock:
            unfinished = [i for i in soak.accepted if i not in soak.finished]
        with psycopg.connect(_pg(db_url)) as conn:
            details = conn.execute("SELECT id::text, status, attempts, worker, now() - updated_at FROM tasks_task "
                                   "WHERE id = ANY(%s::uuid[])", [unfinished]).fetchall()
        rows = {d[0]: d[1] for d in details}
        answered_twice = sum(1 for i in soak.finished if _log_dones(soak.base_url, soak.key, i) > 1)
        return {
            "minutes": args.minutes, "rate": args.rate, "chaos": args.chaos,
            "accepted": len(soak.accepted), "ended": len(soak.finished),
            "by_status": {s: list(soak.finished.values()).count(s) for s in TERMINAL},
            "lost": sum(1 for i in unfinished if i not in rows),
            "stuck": sum(1 for i in unfinished if i in rows),
            "answered_twice": answered_twice,
            "responses": {str(k): v for k, v in sorted(soak.status_counts.items())},
            "responses_5xx": sum(v for k, v in soak.status_counts.items() if k >= 500),
            "responses_503": soak.status_counts.get(503, 0),
            "transport_errors": soak.transport_errors,
            "faults": soak.faults,
            "stuck_tasks": [{"id": d[0], "status": d[1], "attempts": d[2], "worker": d[3], "idle_s": d[4].seconds}
                            for d in details[:20]],
        }
    finally:
        for proc in [*workers.values(), *procs]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT if proc in workers.values() else signal.SIGTERM)
        for proc in [*workers.values(), *procs]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.close()
        with psycopg.connect(_pg(admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def report(result: dict[str, Any]) -> str:
    lines = [f"Soak: {result['minutes']} min at {result['rate']} tasks/s, chaos {'on' if result['chaos'] else 'off'}",
             f"  accepted {result['accepted']}, ended {result['ended']} {result['by_status']}",
             f"  lost {result['lost']}, stuck {result['stuck']}, answered twice {result['answered_twice']}",
             f"  responses {result['responses']} (5xx: {result['responses_5xx']}, of them 503: "
             f"{result['responses_503']}), transport errors {result['transport_errors']}",
             "  faults (at s, fault, took s, tasks open at its end, recovery s):"]
    for f in result["faults"]:
        lines.append(f"    {f['at_s']:>7} {f['fault']:<20} {f['took_s']:>5} {f['open_tasks']:>5} {f['recovery_s']}")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    soak = sub.add_parser("soak", help="a steady load, optionally with random faults (--chaos)")
    soak.add_argument("--chaos", action="store_true", help="inject a random fault every --every seconds")
    soak.add_argument("--minutes", type=float, default=20.0)
    soak.add_argument("--rate", type=float, default=5.0, help="tasks per second (each streams ~2 s)")
    soak.add_argument("--every", type=float, default=60.0, help="seconds between faults")
    soak.add_argument("--drain", type=float, default=180.0, help="seconds the tasks get to end after the load")
    soak.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    soak.add_argument("--logdir", default="")
    soak.add_argument("--json", default="", help="also write the result here")


def main(args: argparse.Namespace) -> int:
    result = run_soak(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["lost"] == result["stuck"] == result["answered_twice"] == 0 else 1
