"""`python -m bench run`: start the stack per configuration, run the scenarios through the
load generator (a separate process), repeat, and write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from . import report, soak
from .profiling import py_spy, summarize
from .stack import CONFIGS, ROOT, BenchStack, base_env, db_fresh, infra_setup, template_prepare

SCENARIOS = ("enqueue", "overhead", "capacity", "inflight", "cancel", "fanout", "openai", "fairness")
# Scenario 7 (issue 20): a 3,000-task flood of 10 s tasks, then 5 one-line tasks of another
# tenant; and two tenants keeping a backlog, one with tasks ten times longer. The shares
# phase needs the workers' slots to be the limit, and both backlogs to outlast the posting
# and the window: run it with few slots, --env MAGEAGENT_WORKER_CONCURRENCY=20 (with 100,
# the 400 long tasks were all served while the short ones were still being posted).
FAIRNESS = {"flood_n": 3000, "flood_llm": {"ttft_ms": 500, "tokens": 100, "duration_ms": 10000}, "late_n": 5,
            "long_n": 300, "long_llm": {"ttft_ms": 100, "tokens": 200, "duration_ms": 10000},
            "short_n": 1500, "short_llm": {"ttft_ms": 100, "tokens": 20, "duration_ms": 1000}, "window_s": 60}
# Scenario 6's streamed tasks: 20 tokens over 1 s, the same on the native path and on /v1.
OPENAI_LLM = {"ttft_ms": 100, "tokens": 20, "duration_ms": 1000}

# The 3 s LLM of the capacity scenario: 0.5 s to the first token, then 100 tokens over 2.5 s.
CAPACITY_LLM = {"ttft_ms": 500, "tokens": 100, "duration_ms": 2500}
# The in-flight variant: the same 100 tokens over 35 s, so that over 1,000 tasks are open at
# 35 tasks/s, a rate the machine holds (with the 3 s LLM, 1,000 open means 333 tasks/s).
INFLIGHT_LLM = {"ttft_ms": 500, "tokens": 100, "duration_ms": 34500}

PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "runs": 3,
        "enqueue": {"rates": [25, 50, 100, 200, 300, 400, 500], "step_s": 3.0, "tokens": 1, "drain_s": 20,
                    "stop_after_misses": 2, "reference_rate": 200, "p99_target_ms": 25},
        "overhead": {"rates": [20, 50], "step_s": 5.0, "tokens": 20, "ttft_rate": 20, "main_rate": 50},
        "capacity": {"llm": CAPACITY_LLM, "rates": [25, 50, 100, 200, 340], "step_s": 8.0, "settle_s": 3.5,
                     "follow_per_step": 100, "hold_ratio": 0.9,
                     "chunk_cost": {"rate": 4, "duration_ms": 2000, "tokens_hi": 200, "tokens_lo": 10,
                                    "settle_s": 2.5, "window_s": 6.0,
                                    "dense": {"rate": 25, "duration_ms": 4000, "settle_s": 4.5}}},
        "inflight": {"llm": INFLIGHT_LLM, "rates": [35], "step_s": 47.0, "settle_s": 37.0, "follow_per_step": 100,
                     "hold_ratio": 0.9, "chunk_cost": None, "follow_grace_s": 15},
        "cancel": {"n": 40, "concurrency": 5, "llm": {"ttft_ms": 200, "tokens": 200, "interval_ms": 50}},
        "fanout": {"subscribers": 500, "connect_concurrency": 50,
                   "llm": {"ttft_ms": 8000, "tokens": 50, "interval_ms": 40}},
        "openai": {"llm": OPENAI_LLM, "rate": 20, "step_s": 10.0},
        "fairness": FAIRNESS,
    },
    "quick": {
        "runs": 1,
        "enqueue": {"rates": [100, 200], "step_s": 2.0, "tokens": 1, "drain_s": 8,
                    "stop_after_misses": 2, "reference_rate": 200, "p99_target_ms": 25},
        "overhead": {"rates": [20, 50], "step_s": 2.0, "tokens": 20, "ttft_rate": 20, "main_rate": 50},
        "capacity": {"llm": CAPACITY_LLM, "rates": [340], "step_s": 6.5, "settle_s": 3.5,
                     "follow_per_step": 100, "hold_ratio": 0.9, "follow_grace_s": 5,
                     "chunk_cost": {"rate": 4, "duration_ms": 2000, "tokens_hi": 200, "tokens_lo": 10,
                                    "settle_s": 2.2, "window_s": 2.0, "drain_s": 8,
                                    "dense": {"rate": 25, "duration_ms": 4000, "settle_s": 4.5, "window_s": 2.5}}},
        "inflight": {"llm": INFLIGHT_LLM, "rates": [35], "step_s": 44.0, "settle_s": 37.0, "follow_per_step": 50,
                     "hold_ratio": 0.9, "chunk_cost": None, "follow_grace_s": 15},
        "cancel": {"n": 10, "concurrency": 5, "llm": {"ttft_ms": 200, "tokens": 200, "interval_ms": 50}},
        "fanout": {"subscribers": 500, "connect_concurrency": 50,
                   "llm": {"ttft_ms": 4500, "tokens": 50, "interval_ms": 40}},
        "openai": {"llm": OPENAI_LLM, "rate": 15, "step_s": 8.0},
        "fairness": {**FAIRNESS, "flood_n": 1000, "long_n": 150, "short_n": 1500, "window_s": 30},
    },
    # A few tasks per scenario: the test suite's smoke test of the harness itself.
    "smoke": {
        "runs": 1,
        "enqueue": {"rates": [10], "step_s": 0.5, "tokens": 1, "drain_s": 10, "reference_rate": 10},
        "overhead": {"rates": [8], "step_s": 0.5, "tokens": 20, "ttft_rate": 8, "main_rate": 8},
        "capacity": {"llm": {"ttft_ms": 100, "tokens": 10, "duration_ms": 300}, "rates": [6], "step_s": 2.0,
                     "settle_s": 0.8, "follow_per_step": 4, "hold_ratio": 0.0,
                     "chunk_cost": {"rate": 2, "duration_ms": 300, "tokens_hi": 20, "tokens_lo": 2,
                                    "settle_s": 0.5, "window_s": 1.0,
                                    "dense": {"rate": 4, "duration_ms": 500, "settle_s": 0.6}}},
        "inflight": {"llm": {"ttft_ms": 100, "tokens": 10, "duration_ms": 1000}, "rates": [4], "step_s": 2.0,
                     "settle_s": 1.3, "follow_per_step": 4, "hold_ratio": 0.0, "chunk_cost": None},
        "cancel": {"n": 2, "concurrency": 2, "llm": {"ttft_ms": 100, "tokens": 100, "interval_ms": 50}},
        "fanout": {"subscribers": 6, "connect_concurrency": 6,
                   "llm": {"ttft_ms": 2500, "tokens": 5, "interval_ms": 20}},
        "openai": {"llm": {"ttft_ms": 50, "tokens": 5, "duration_ms": 200}, "rate": 4, "step_s": 0.5},
        "fairness": {"flood_n": 20, "flood_llm": {"ttft_ms": 50, "tokens": 5, "duration_ms": 500}, "late_n": 2,
                     "long_n": 4, "long_llm": {"ttft_ms": 50, "tokens": 20, "duration_ms": 1000},
                     "short_n": 20, "short_llm": {"ttft_ms": 50, "tokens": 2, "duration_ms": 100}, "window_s": 2,
                     "drain_s": 20},
    },
}


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_scenario(stack: BenchStack, *, scenario: str, params: dict[str, Any], key: str, workdir: Path,
                 tag: str, profile: dict[str, Any] | None = None, timeout: float = 900) -> dict[str, Any]:
    spec = {"scenario": scenario, "params": params, "web": stack.web_url, "sim": stack.sim_url, "key": key,
            "keys": [stack.infra.other_key],
            "nonce": uuid.uuid4().hex[:8], "pids": stack.pids(), "config": stack.config.name,
            "postgres": ({"url": stack.infra.admin_url, "db": stack.infra.db_name}
                         if stack.infra.db_kind == "postgres" else None),
            "profile": profile}
    spec_path, out_path = workdir / f"{tag}-{scenario}.spec.json", workdir / f"{tag}-{scenario}.out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    log = workdir / f"{tag}-{scenario}.loadgen.log"
    t0 = time.time()
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)], cwd=ROOT,
                                env=base_env(), stdout=err, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            rc = -9
        except BaseException:  # interrupted: the load generator must not outlive the run
            proc.kill()
            proc.wait(10)
            raise
    dead = stack.alive()
    if rc != 0 or not out_path.exists():
        tail = log.read_text(errors="replace")[-2000:]
        return {"error": f"load generator exited {rc}: {tail}", "dead": dead}
    result = json.loads(out_path.read_text())
    result["wall_s"] = round(time.time() - t0, 1)
    if dead:
        result["dead_processes"] = dead
    return result


def run_order(scenarios: list[str]) -> list[str]:
    """Capacity runs last in a stack's life: whatever an overloaded configuration leaves
    behind (queued backlog, open streams) then disturbs no other scenario."""
    return [s for s in ("enqueue", "overhead", "cancel", "fanout", "openai", "fairness", "inflight", "capacity")
            if s in scenarios]


def start_stack(stack: BenchStack, key: str, workdir: Path, tag: str) -> None:
    """Start, wait until idle, warm every code path up, wait until idle again."""
    t0 = time.time()
    stack.start()
    t1 = time.time()
    idle = stack.wait_idle()
    warm = run_scenario(stack, scenario="warmup", params={"rate": 20, "seconds": 1.0}, key=key, workdir=workdir,
                        tag=tag)
    if "summary" not in warm or warm["summary"].get("errors"):
        raise RuntimeError(f"the warm-up failed: {warm.get('error') or warm.get('summary')}")
    idle += stack.wait_idle()
    _log(f"{tag}: stack up in {t1 - t0:.1f}s, idle + warm after {time.time() - t1:.1f}s "
         f"(idle waits {idle:.1f}s); worker: {stack.worker_banner}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmark and write BENCHMARKS.md")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 run, shorter steps (~2 min)")
    mode.add_argument("--smoke", action="store_true", help="a few tasks per scenario (the test suite's smoke test)")
    run.add_argument("--runs", type=int, help="repetitions per configuration (default 3; 1 with --quick)")
    run.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    run.add_argument("--configs", default="ours,seed", help="comma-separated subset of ours,seed")
    run.add_argument("--workers", type=int, default=1, help="Celery worker processes for 'ours' (default 1)")
    run.add_argument("--web-processes", type=int, default=1,
                     help="web processes for both configurations: 1 = the contract's single daphne (default), "
                          "N > 1 = `python -m mageagent.web --processes N` (N daphnes on one socket)")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="extra environment for the service (both configurations; the seed keeps its 3 knobs)")
    run.add_argument("--set", action="append", default=[], metavar="SCENARIO.KEY=JSON", dest="overrides",
                     help="override one parameter of the preset, e.g. capacity.rates=[30] (a JSON value)")
    run.add_argument("--profile", action="store_true",
                     help="after the measured runs, profile web and worker with py-spy (one extra run each)")
    run.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the Markdown file to update")
    run.add_argument("--no-write", action="store_true", help="do not touch the Markdown file")
    run.add_argument("--json", help="also write the raw results here (default: bench/results/<stamp>.json)")
    run.add_argument("--redis-db", type=int, help="Redis database number (default 12; 11 with --smoke)")
    run.add_argument("--db-name", help="PostgreSQL database name (default mageagent_bench)")
    soak.add_parser(sub)
    return ap.parse_args(argv)


def preset_with(preset: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The preset with `scenario.key[.key...]=<JSON>` overrides applied (`--set`)."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        keys = path.split(".")
        if not sep or len(keys) < 2 or keys[0] not in preset or not isinstance(preset[keys[0]], dict):
            raise SystemExit(f"--set {item!r}: expected SCENARIO.KEY=JSON with a scenario of {SCENARIOS}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise SystemExit(f"--set {item!r}: the value is not JSON (quote strings: key='\"text\"')") from None
        target = preset[keys[0]]
        for key in keys[1:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return preset


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "soak":
        return soak.main(args)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = preset_with(copy.deepcopy(PRESETS[mode]), args.overrides)
    runs = args.runs if args.runs is not None else preset["runs"]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {SCENARIOS}")
    for name in configs:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; choose from {tuple(CONFIGS)}")
    extra_env = dict(e.split("=", 1) for e in args.env)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = ROOT / "bench" / "results"
    workdir = results_dir / f"{stamp}-{mode}"
    workdir.mkdir(parents=True, exist_ok=True)
    smoke = mode == "smoke"
    db_name = args.db_name or (f"mageagent_bench_smoke_{os.getpid()}" if smoke else "mageagent_bench")
    redis_db = args.redis_db if args.redis_db is not None else (11 if smoke else 12)

    # `kill` (SIGTERM) unwinds like Ctrl-C, so every process the benchmark started is stopped.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    started = time.time()
    infra = infra_setup(db_name=db_name, redis_db=redis_db, flush_redis=not smoke)
    _log(f"{mode}: {runs} run(s) x {configs} x {scenarios}; {infra.describe()}; logs in {workdir}")
    results: dict[str, Any] = {"runs": {c: {s: [] for s in scenarios} for c in configs}}
    banners: dict[str, str] = {}
    references: list[float] = []
    try:
        key = template_prepare(infra, base_env(), workdir / "migrate.log")
        for run in range(runs):
            order = configs if run % 2 == 0 else list(reversed(configs))
            for cfg in order:
                tag = f"r{run + 1}-{cfg}"
                stack = BenchStack(infra, CONFIGS[cfg], db_url=db_fresh(infra), logdir=workdir,
                                   workers=args.workers, extra_env=extra_env, tag=tag,
                                   web_processes=args.web_processes)
                references.append(report.reference_ms())  # at idle: how fast the machine is now
                _log(f"run {run + 1}/{runs}: starting the {cfg} stack (reference workload {references[-1]} ms)")
                try:
                    start_stack(stack, key, workdir, tag)
                    banners[cfg] = stack.worker_banner
                    for scenario in run_order(scenarios):
                        t0 = time.time()
                        res = run_scenario(stack, scenario=scenario, params=preset[scenario], key=key,
                                           workdir=workdir, tag=tag)
                        results["runs"][cfg][scenario].append(res)
                        _log(f"run {run + 1}/{runs} {cfg} {scenario}: {time.time() - t0:.0f}s "
                             f"{json.dumps(res.get('summary') or res.get('error', '')[:300])}")
                        if res.get("dead") or res.get("dead_processes"):
                            raise RuntimeError(f"stack processes died: {res.get('dead') or res.get('dead_processes')}")
                finally:
                    stack.stop()
        if args.profile:
            results["profile"] = profile_pass(infra, configs, preset, key, workdir, args, extra_env)
    finally:
        infra.close()
    elapsed = (time.time() - started) / 60
    results["meta"] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "mode": mode, "runs": runs,
        "configs": configs, "scenarios": scenarios, "elapsed_min": elapsed, "machine": report.machine(),
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "infra": infra.describe(), "banners": banners, "params": preset,
        "config_titles": {c: CONFIGS[c].title for c in configs}, "reference_ms": references,
    }
    json_path = Path(args.json) if args.json else results_dir / f"{stamp}-{mode}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    body = report.render(results)
    if not args.no_write:
        report.write(Path(args.out), body)
    print(body)
    _log(f"done in {elapsed:.1f} min; raw results {json_path}" + ("" if args.no_write else f"; wrote {args.out}"))
    return 0


def profile_pass(infra: Any, configs: list[str], preset: dict[str, Any], key: str, workdir: Path,
                 args: argparse.Namespace, extra_env: dict[str, str]) -> dict[str, Any]:
    """One extra, unmeasured run per configuration with py-spy attached: the top step of the
    capacity ramp (web + worker + simulator), enqueue at 200 req/s (web) and the fan-out (web)."""
    spy = py_spy()
    if spy is None:
        _log("--profile: py-spy is not installed (pip install py-spy); skipping the profile")
        return {}
    prof_dir = workdir / "profile"
    out: dict[str, Any] = {}
    for cfg in configs:
        stack = BenchStack(infra, CONFIGS[cfg], db_url=db_fresh(infra), logdir=workdir, workers=args.workers,
                           extra_env=extra_env, tag=f"profile-{cfg}", web_processes=args.web_processes)
        _log(f"profile: starting the {cfg} stack")
        try:
            start_stack(stack, key, workdir, f"profile-{cfg}")
            cap = copy.deepcopy(preset["capacity"])
            # One long step at the top rate: a longer window gives the profile more samples.
            cap.update(rates=cap["rates"][-1:], chunk_cost=None, step_s=cap["settle_s"] + 8.0)
            spec = {"dir": str(prof_dir), "py_spy": spy, "targets": ["web", "worker", "simulator"], "rate": 200}
            run_scenario(stack, scenario="capacity", params=cap, key=key, workdir=workdir,
                         tag=f"profile-{cfg}", profile=spec)
            enq = copy.deepcopy(preset["enqueue"])
            enq.update(rates=[enq.get("reference_rate", 200)], step_s=max(enq["step_s"], 4.0),
                       profile_at=enq.get("reference_rate", 200), phases=["burst"])
            run_scenario(stack, scenario="enqueue", params=enq, key=key, workdir=workdir,
                         tag=f"profile-{cfg}", profile={**spec, "targets": ["web"]})
            run_scenario(stack, scenario="fanout", params=copy.deepcopy(preset["fanout"]), key=key,
                         workdir=workdir, tag=f"profile-{cfg}", profile={**spec, "targets": ["web"]})
        finally:
            stack.stop()
        for label, proc in (("capacity", "web"), ("capacity", "worker"), ("capacity", "simulator"),
                            ("enqueue", "web"), ("fanout", "web")):
            path = prof_dir / f"{cfg}-{label}-{proc}.folded"
            if path.exists():
                out[f"{cfg} {proc} during {label}"] = summarize(path)
    _log(f"profile: folded stacks in {prof_dir} (flamegraph.pl or speedscope read them)")
    return out
