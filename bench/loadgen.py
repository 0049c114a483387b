"""The load generator: a process of its own (never the server's) that runs one scenario
against a running stack and writes its measurements as JSON.

    python -m bench.loadgen SPEC.json OUT.json

SPEC holds the stack's URLs, the API key, the scenario's parameters and the pids of the
stack's processes (CPU and RSS are read from /proc at the scenario's window edges).
Every load loop here is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .client import Api, Created, Follow, parse_ts, pcts, percentile, sim_prompt, verify
from .procs import ProcGroups, Snapshot, cpu_delta, descendants

MB = 1024 * 1024


# --- shared machinery ----------------------------------------------------------------------------
class Ctx:
    def __init__(self, spec: dict[str, Any], api: Api) -> None:
        self.spec, self.api = spec, api
        self.params: dict[str, Any] = spec["params"]
        self.nonce: str = spec["nonce"]
        self.groups = ProcGroups()
        for name, g in spec["pids"].items():
            self.groups.add(name, g["pids"], tree=g.get("tree", False))
        pg = spec.get("postgres")
        if pg:
            self.groups.add_dynamic("postgres", _pg_backends(pg["url"], pg["db"]))
        self.groups.add("loadgen", [_own_pid()])
        self.profilers: list[subprocess.Popen[bytes]] = []

    def snapshot(self) -> Snapshot:
        return self.groups.snapshot()

    def profile_start(self, seconds: float, label: str) -> None:
        prof = self.spec.get("profile")
        if not prof:
            return
        out = Path(prof["dir"])
        out.mkdir(parents=True, exist_ok=True)
        for name in prof.get("targets", ["web", "worker"]):
            g = self.spec["pids"].get(name)
            if not g or not g["pids"]:
                continue
            argv = [prof["py_spy"], "record", "-p", str(g["pids"][0]), "-d", str(max(int(seconds), 1)),
                    "-r", str(prof.get("rate", 200)), "-f", "raw", "--nonblocking", "--full-filenames", "--gil",
                    "-o", str(out / f"{self.spec['config']}-{label}-{name}.folded")]
            if g.get("tree"):
                argv.append("--subprocesses")
            self.profilers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def profile_wait(self) -> None:
        for p in self.profilers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.profilers.clear()


def _own_pid() -> int:
    return os.getpid()


def _pg_backends(url: str, db: str) -> Callable[[], list[int]]:
    """The pids of the PostgreSQL backends serving the benchmark's database. One connection
    is kept open: a new one per snapshot would fork a backend whose CPU nobody accounts."""
    conn: Any = None

    def resolve() -> list[int]:
        nonlocal conn
        import psycopg

        if conn is None or conn.closed:
            conn = psycopg.connect(url.replace("postgres://", "postgresql://", 1), connect_timeout=2,
                                   autocommit=True)
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (db,)).fetchall()
        return [int(r[0]) for r in rows]

    return resolve


@dataclass
class Load:
    """What an open-loop load started: the tasks (not awaited), how late each start was (s),
    and how many arrivals were shed because too many requests were already outstanding."""

    tasks: list[asyncio.Task[Any]]
    lags: list[float]
    shed: int


async def open_loop(rate: float, duration: float, fn: Callable[[int], Awaitable[Any]], *,
                    start_index: int = 0, max_outstanding: int | None = None) -> Load:
    """Start fn(i) at a fixed rate (open loop: arrivals do not wait for answers). When
    `max_outstanding` calls are unfinished, further arrivals are shed (counted, not sent), so
    an overloaded server is never buried under an ever-growing pile of requests."""
    loop = asyncio.get_running_loop()
    n = max(1, round(rate * duration))
    t0 = loop.time() + 0.01
    load = Load([], [], 0)
    outstanding = 0

    def finished(_t: asyncio.Task[Any]) -> None:
        nonlocal outstanding
        outstanding -= 1

    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        load.lags.append(max(loop.time() - due, 0.0))
        if max_outstanding is not None and outstanding >= max_outstanding:
            load.shed += 1
            continue
        outstanding += 1
        task = asyncio.ensure_future(fn(start_index + i))
        task.add_done_callback(finished)
        load.tasks.append(task)
    return load


async def sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def per_task_ms(cpu: dict[str, float], n: int) -> dict[str, float | None]:
    return {name: (round(c * 1000.0 / n, 3) if n else None) for name, c in cpu.items()}


def rss_mb(snap: Snapshot) -> dict[str, float]:
    return {name: round(v / MB, 1) for name, v in snap.rss.items()}


async def drain(api: Api, timeout: float) -> dict[str, Any]:
    """Wait until no task of ours is queued or running; past the timeout, cancel what is
    still queued (the backlog of a configuration that could not keep up)."""
    t0 = time.time()
    deadline = t0 + timeout
    while time.time() < deadline:
        m = await api.queue_metrics()
        if not m.get("waiting") and not m.get("active") and not m.get("delayed"):
            return {"drained": True, "drain_s": round(time.time() - t0, 2), "cancelled_backlog": 0}
        await asyncio.sleep(0.2)
    cancelled = await cancel_backlog(api, created_after=t0 - 3600)
    end = time.time() + 30
    while time.time() < end:
        m = await api.queue_metrics()
        if not m.get("active") and not m.get("waiting"):
            break
        await asyncio.sleep(0.25)
    return {"drained": False, "drain_s": round(time.time() - t0, 2), "cancelled_backlog": cancelled}


async def cancel_backlog(api: Api, *, created_after: float) -> int:
    """Cancel every queued task of ours (never started: the cancel is one guarded UPDATE)."""
    total = 0
    for _ in range(20):
        queued = await api.list_tasks(created_after=created_after, status="queued", limit=2000)
        if not queued:
            break
        sem = asyncio.Semaphore(16)

        async def one(task_id: str, sem: asyncio.Semaphore = sem) -> None:
            async with sem:
                await api.cancel(task_id)

        await asyncio.gather(*(one(t["id"]) for t in queued))
        total += len(queued)
    return total


async def verify_follows(api: Api, follows: list[Follow]) -> dict[str, Any]:
    """Check every followed stream against the finished task (fetched afresh)."""
    sem = asyncio.Semaphore(16)
    out: dict[str, Any] = {"followed": len(follows), "sse": 0, "ws": 0, "lost": 0, "repeated": 0,
                           "bad_done": 0, "content_mismatch": 0, "out_of_order": 0, "stream_errors": 0,
                           "sse_id_mismatch": 0, "verified": 0, "unfinished": 0, "broken": 0, "examples": []}

    async def one(f: Follow) -> None:
        async with sem:
            task = await api.get_task(f.task_id)
        content = ((task or {}).get("result") or {}).get("content") or ""
        v = verify([e for _, e in f.events], content)
        out[f.transport] += 1
        if f.error == "unfinished":
            # Cut by the benchmark (its task had not finished in time): only what arrived
            # can be checked.
            out["unfinished"] += 1
            out["lost"] += v["lost"]
            out["repeated"] += v["repeated"]
            out["out_of_order"] += int(not v["in_order"])
            return
        out["lost"] += v["lost"]
        out["repeated"] += v["repeated"]
        out["bad_done"] += int(v["done"] != 1 or not v["done_last"])
        out["content_mismatch"] += int(not v["content_ok"])
        out["out_of_order"] += int(not v["in_order"])
        out["stream_errors"] += int(bool(f.error))
        out["sse_id_mismatch"] += f.id_mismatch
        out["verified"] += int(v["ok"] and not f.error)
        out["broken"] += int(not (v["ok"] and not f.error))
        if (not v["ok"] or f.error) and len(out["examples"]) < 5:
            out["examples"].append({"task": f.task_id, "transport": f.transport, "error": f.error, **v,
                                    "status": (task or {}).get("status"), "events": len(f.events)})

    await asyncio.gather(*(one(f) for f in follows))
    return out


def _concurrency(records: list[dict[str, Any]], t0: float, t1: float, step: float = 0.1) -> list[int]:
    """Open LLM streams at the simulator, sampled every `step` seconds in [t0, t1)."""
    spans = []
    for r in records:
        start = r.get("received_at")
        end = r.get("finished_at") or r.get("closed_at") or r.get("aborted_at") or float("inf")
        if start is not None and start < t1 and end > t0:
            spans.append((start, end))
    samples = []
    t = t0
    while t < t1:
        samples.append(sum(1 for s, e in spans if s <= t < e))
        t += step
    return samples


# --- 1. enqueue ----------------------------------------------------------------------------------
class _Paused:
    """SIGSTOP the worker processes (and their children) for a burst step, SIGCONT after:
    the front door alone, every task staying queued, which is what a queue absorbs."""

    def __init__(self, groups: dict[str, Any] | None) -> None:
        self.pids: list[int] = []
        for pid in (groups or {}).get("pids", []):
            self.pids += descendants(pid) if groups.get("tree") else [pid]

    def __enter__(self) -> _Paused:
        self._signal(signal.SIGSTOP)
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


async def _enqueue_phase(ctx: Ctx, phase: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    p = ctx.params
    api = ctx.api
    target = p.get("p99_target_ms", 25.0)
    steps: list[dict[str, Any]] = []
    misses = 0
    for rate in p["rates"]:
        prompt = sim_prompt("enqueue", tokens=p.get("tokens", 1))
        pause = _Paused(ctx.spec["pids"].get("worker")) if phase == "burst" else contextlib.nullcontext()
        with pause:
            snap0, t0 = ctx.snapshot(), time.time()
            if p.get("profile_at") == rate and phase == p.get("profile_phase", "burst"):
                ctx.profile_start(p["step_s"], "enqueue")
            load = await open_loop(rate, p["step_s"], lambda _i, prompt=prompt: api.create(prompt),
                                   max_outstanding=max(32, int(rate * p.get("max_backlog_s", 1.0))))
            created: list[Created] = await asyncio.gather(*load.tasks)
            snap1, t1 = ctx.snapshot(), time.time()
            ctx.profile_wait()
        lags = load.lags
        ok = [c for c in created if c.ok]
        lat = [c.latency_ms for c in ok]
        cpu = cpu_delta(snap0, snap1)
        step = {"phase": phase, "rate": rate, "requests": len(created),
                "shed": load.shed + sum(c.refused for c in created), "refused": sum(c.refused for c in created),
                "errors": sum(c.failed for c in created),
                "error_examples": list({c.error or str(c.status) for c in created if c.failed})[:3],
                "latency_ms": pcts(lat, 2), "client_lag_ms": pcts([x * 1000 for x in lags], 2),
                "achieved_rate": round(len(created) / max(t1 - t0, 1e-9), 1),
                "cpu_s": cpu, "cpu_ms_per_request": per_task_ms(cpu, len(created))}
        # A burst's backlog is run by the resumed worker before the next step.
        step.update(await drain(api, p.get("drain_s", 20) * (3 if phase == "burst" else 1)))
        steps.append(step)
        p99 = step["latency_ms"]["p99"]
        misses = misses + 1 if (p99 is None or p99 > target or step["errors"] or step["shed"]) else 0
        # The reference rate (the target's 200 req/s) is always measured; past it the ramp
        # stops after consecutive misses.
        if misses >= p.get("stop_after_misses", 2) and rate >= p.get("reference_rate", 200):
            break
    held = [s["rate"] for s in steps if s["latency_ms"]["p99"] is not None
            and s["latency_ms"]["p99"] <= target and not s["errors"] and not s["shed"]]
    ref = next((s for s in steps if s["rate"] == p.get("reference_rate", 200)), None)
    summary = {
        "best_rate": max(held) if held else 0,
        "p50_ms_at_ref": ref["latency_ms"]["p50"] if ref else None,
        "p99_ms_at_ref": ref["latency_ms"]["p99"] if ref else None,
        "web_cpu_ms_per_request_at_ref": ref["cpu_ms_per_request"].get("web") if ref else None,
        "shed_at_ref": ref["shed"] if ref else None,
        "errors": sum(s["errors"] for s in steps),
    }
    return steps, summary


async def scenario_enqueue(ctx: Ctx) -> dict[str, Any]:
    """Two phases over the same rates: "burst", the worker stopped (SIGSTOP) during each
    step, so that the web, Redis and the database take the requests alone, as when a
    burst arrives faster than tasks run; "sustained", the worker running the 1-token
    tasks meanwhile, so that enqueue shares the machine with their execution."""
    steps: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for phase in ctx.params.get("phases", ["burst", "sustained"]):
        phase_steps, phase_summary = await _enqueue_phase(ctx, phase)
        steps += phase_steps
        prefix = "" if phase == "burst" else f"{phase}_"
        summary.update({f"{prefix}{k}": v for k, v in phase_summary.items() if k != "errors"})
        summary["errors"] = summary.get("errors", 0) + phase_summary["errors"]
    return {"summary": summary, "steps": steps}


# --- 2. overhead ---------------------------------------------------------------------------------
async def scenario_overhead(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    api = ctx.api
    steps: list[dict[str, Any]] = []
    all_follows: list[Follow] = []
    errors = 0
    for rate in p["rates"]:
        follows: list[Follow] = []
        t0 = time.time()
        snap0 = ctx.snapshot()

        async def one(i: int, rate: float = rate, follows: list[Follow] = follows) -> Created:
            # Half the tasks have an LLM without latency (pickup, end overhead); the other half
            # answer after `probe_ttft_ms`, so that their subscriber is surely listening when
            # the first token comes (TTFT overhead is measured from the simulator's first
            # token, so the LLM's own latency is not part of it).
            key = f"{ctx.nonce}-ov{rate}-{i}"
            ttft = p.get("probe_ttft_ms", 300) if i % 4 >= 2 else 0
            created = await api.create(sim_prompt("overhead", tokens=p.get("tokens", 20), ttft_ms=ttft, key=key))
            if created.ok:
                f = Follow(created.task_id, "sse" if i % 2 == 0 else "ws", key=key)
                follows.append(f)
                await api.follow(f, timeout=p.get("follow_timeout_s", 30))
            return created

        load = await open_loop(rate, p["step_s"], one, max_outstanding=max(32, int(rate * 2)))
        lags = load.lags
        created: list[Created] = await asyncio.gather(*load.tasks)
        snap1 = ctx.snapshot()
        n_ok = sum(1 for c in created if c.ok)
        errors += sum(c.failed for c in created)
        records = {r["key"]: r for r in await api.sim_records(t0 - 1)}
        rows = {t["id"]: t for t in await api.list_tasks(created_after=t0 - 1)}
        pickup, ttft, ttft_all, end, worker_part, delivery, start_to_llm = [], [], [], [], [], [], []
        late = 0
        by_transport: dict[str, list[float]] = {"sse": [], "ws": []}
        for f in follows:
            rec, row = records.get(f.key), rows.get(f.task_id)
            if row and row.get("started_at"):
                started, created_at = parse_ts(row["started_at"]), parse_ts(row["created_at"])
                assert started is not None and created_at is not None
                pickup.append((started - created_at) * 1000)
                if rec and rec.get("received_at"):
                    start_to_llm.append((rec["received_at"] - started) * 1000)
            first = f.first("chunk")
            done = f.first("done")
            if rec and rec.get("first_token_at") and first:
                over = (first[0] - rec["first_token_at"]) * 1000
                ttft_all.append(over)
                if f.ready_at is not None and f.ready_at <= rec["first_token_at"]:
                    ttft.append(over)
                    by_transport[f.transport].append(over)
                    ts = parse_ts(first[1].get("ts"))
                    if ts is not None:
                        worker_part.append((ts - rec["first_token_at"]) * 1000)
                        delivery.append((first[0] - ts) * 1000)
                else:
                    late += 1
            if rec and rec.get("last_token_at") and done:
                end.append((done[0] - rec["last_token_at"]) * 1000)
        steps.append({
            "rate": rate, "tasks": len(created), "errors": sum(c.failed for c in created),
            "shed": load.shed + sum(c.refused for c in created),
            "client_lag_ms": pcts([x * 1000 for x in lags], 2),
            "pickup_ms": pcts(pickup), "ttft_overhead_ms": pcts(ttft), "ttft_overhead_incl_late_ms": pcts(ttft_all),
            "ttft_overhead_sse_ms": pcts(by_transport["sse"]), "ttft_overhead_ws_ms": pcts(by_transport["ws"]),
            "late_subscriptions": late, "end_overhead_ms": pcts(end),
            "decomposition_ms_p50": {
                "created_to_started (pickup)": percentile(pickup, 50),
                "started_to_llm_request": percentile(start_to_llm, 50),
                "llm_first_token_to_chunk_event_ts (worker, 1 ms resolution)": percentile(worker_part, 50),
                "chunk_event_ts_to_client (event path)": percentile(delivery, 50),
            },
            "cpu_ms_per_task": per_task_ms(cpu_delta(snap0, snap1), n_ok),
        })
        all_follows.extend(follows)
    check = await verify_follows(api, all_follows)
    by_rate = {s["rate"]: s for s in steps}
    ref = by_rate.get(p.get("ttft_rate", 20)) or steps[0]
    main = by_rate.get(p.get("main_rate", 50)) or steps[-1]
    summary = {
        "pickup_p50_ms": main["pickup_ms"]["p50"], "pickup_p99_ms": main["pickup_ms"]["p99"],
        "ttft_p50_ms_at_ref": ref["ttft_overhead_ms"]["p50"], "ttft_p99_ms_at_ref": ref["ttft_overhead_ms"]["p99"],
        "ttft_p50_ms_at_main": main["ttft_overhead_ms"]["p50"], "ttft_p99_ms_at_main": main["ttft_overhead_ms"]["p99"],
        "end_p50_ms": main["end_overhead_ms"]["p50"], "end_p99_ms": main["end_overhead_ms"]["p99"],
        "late_subscriptions": sum(s["late_subscriptions"] for s in steps),
        "lost": check["lost"], "repeated": check["repeated"],
        "errors": errors + check["broken"],
    }
    return {"summary": summary, "steps": steps, "events_check": check}


# --- 3. capacity ---------------------------------------------------------------------------------
async def _chunk_cost(ctx: Ctx) -> dict[str, Any]:
    """Worker CPU per streamed chunk: two loads with the same task rate and LLM duration but
    different token counts; the difference in worker CPU over the difference in tokens is
    what one chunk costs (parse, coalesce, publish), per-task costs cancelling out.

    Measured twice: with few streams open (each token is a socket read and a loop turn of
    its own: the worst case) and, under `dense`, with ~100 streams open, where one loop
    turn serves several streams' tokens: the regime of the capacity targets."""
    p = ctx.params["chunk_cost"]
    out = await _chunk_cost_at(ctx, p, "chunkcost")
    if p.get("dense"):
        out["dense"] = await _chunk_cost_at(ctx, {**p, **p["dense"]}, "chunkdense")
    return out


async def _chunk_cost_at(ctx: Ctx, p: dict[str, Any], label_: str) -> dict[str, Any]:
    api = ctx.api
    out: dict[str, Any] = {"rate": p["rate"], "duration_ms": p["duration_ms"]}
    for label, tokens in (("hi", p["tokens_hi"]), ("lo", p["tokens_lo"])):
        prompt = sim_prompt(label_, tokens=tokens, duration_ms=p["duration_ms"])
        t0 = time.time()
        loader = asyncio.ensure_future(open_loop(p["rate"], p["settle_s"] + p["window_s"] + 0.5,
                                                 lambda _i, prompt=prompt: api.create(prompt),
                                                 max_outstanding=max(64, int(p["rate"] * 2))))
        w0 = t0 + p["settle_s"]
        await sleep_until(w0)
        snap0, stats0 = ctx.snapshot(), await api.sim_stats()
        await sleep_until(w0 + p["window_s"])
        w1 = time.time()
        snap1, stats1 = ctx.snapshot(), await api.sim_stats()
        load = await loader
        created = await asyncio.gather(*load.tasks)
        cpu = cpu_delta(snap0, snap1)
        conc = _concurrency(await api.sim_records(w0 - 10), w0, w1)
        out[label] = {"tokens_per_task": tokens, "tokens": stats1["tokens_sent_total"] - stats0["tokens_sent_total"],
                      "worker_cpu_s": cpu.get("worker", 0.0), "cpu_s": cpu,
                      "streams_median": percentile([float(c) for c in conc], 50),
                      "errors": sum(1 for c in created if not c.ok) + load.shed}  # any shed spoils the pair
        out[label].update(await drain(api, p.get("drain_s", 15)))
    hi, lo = out["hi"], out["lo"]
    dtok = hi["tokens"] - lo["tokens"]
    marginal = (hi["worker_cpu_s"] - lo["worker_cpu_s"]) / dtok * 1e6 if dtok > 0 else None
    out["marginal_us_per_chunk"] = None if marginal is None else round(marginal, 1)
    out["average_us_per_chunk_hi"] = round(hi["worker_cpu_s"] / hi["tokens"] * 1e6, 1) if hi["tokens"] else None
    out["streams"] = hi["streams_median"]
    return out


async def scenario_capacity(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    api = ctx.api
    llm = p["llm"]
    llm_s = (llm.get("ttft_ms", 0) + llm.get("duration_ms", 0)) / 1000
    chunk = await _chunk_cost(ctx) if p.get("chunk_cost") else None

    rates = list(p["rates"])
    # Each step follows `follow_per_step` of its tasks, spread evenly over the step, half over
    # SSE and half over WebSocket: at least that many streams are checked whichever step
    # the ramp ends at.
    per_step = p["follow_per_step"]
    followed_in_step: dict[float, int] = {}
    step_started: dict[float, float] = {}
    follows: list[Follow] = []
    follow_tasks: list[asyncio.Task[Any]] = []
    post_tasks: list[asyncio.Task[Any]] = []
    rss_samples: list[tuple[float, dict[str, int]]] = []
    stop_sampling = asyncio.Event()

    async def sample_rss() -> None:
        while not stop_sampling.is_set():
            snap = ctx.groups.snapshot()
            rss_samples.append((time.time(), dict(snap.rss)))
            try:
                await asyncio.wait_for(stop_sampling.wait(), p.get("rss_every_s", 1.0))
            except TimeoutError:
                pass

    async def one(i: int, rate: float) -> Created:
        key = f"{ctx.nonce}-cap-{i}"
        created = await api.create(sim_prompt("capacity", key=key, **llm))
        # Spread over the step's time (not its indices: shed arrivals never get a task).
        share = min(1.0, (time.time() - step_started[rate]) / p["step_s"] + 1.0 / max(per_step, 1))
        if created.ok and followed_in_step.get(rate, 0) < min(per_step, math.ceil(per_step * share)):
            followed_in_step[rate] = followed_in_step.get(rate, 0) + 1
            f = Follow(created.task_id, "sse" if len(follows) % 2 == 0 else "ws", key=key)
            follows.append(f)
            follow_tasks.append(asyncio.ensure_future(api.follow(f, timeout=p.get("follow_timeout_s", 120))))
        return created

    sampler = asyncio.ensure_future(sample_rss())
    t_start = time.time()
    steps: list[dict[str, Any]] = []
    index = 0
    shed = 0
    for si, rate in enumerate(rates):
        t0 = time.time()
        w0, w1 = t0 + p["settle_s"], t0 + p["step_s"]
        step_started[rate] = t0
        loader = asyncio.ensure_future(open_loop(rate, p["step_s"], lambda i, r=rate: one(i, r),
                                                 start_index=index,
                                                 max_outstanding=max(64, int(rate * p.get("max_backlog_s", 1.0)))))
        index += max(1, round(rate * p["step_s"]))
        await sleep_until(w0)
        snap0, stats0 = ctx.snapshot(), await api.sim_stats()
        last = si == len(rates) - 1
        if last:
            ctx.profile_start(w1 - w0, "capacity")
        await sleep_until(w1)
        snap1, stats1 = ctx.snapshot(), await api.sim_stats()
        load = await loader
        post_tasks.extend(load.tasks)
        shed += load.shed
        # Every stream open in the window began at most one LLM duration before it.
        records = await api.sim_records(w0 - llm_s - 5)
        done_in = [r for r in records if r.get("finished_at") and w0 <= r["finished_at"] < w1]
        began_in = [r for r in records if w0 <= r["received_at"] < w1]
        conc = _concurrency(records, w0, w1)
        window = w1 - w0
        done_rate = len(done_in) / window
        cpu = cpu_delta(snap0, snap1)
        tokens = stats1["tokens_sent_total"] - stats0["tokens_sent_total"]
        rss_window = [s for t, s in rss_samples if w0 <= t <= w1] or [snap1.rss]
        rss_max = {name: round(max(s.get(name, 0) for s in rss_window) / MB, 1) for name in snap1.rss}
        step = {
            "rate": rate, "window_s": round(window, 2), "shed": load.shed,
            "completed_per_s": round(done_rate, 1), "llm_started_per_s": round(len(began_in) / window, 1),
            "in_flight_llm_median": percentile([float(c) for c in conc], 50),
            "in_flight_llm_max": max(conc) if conc else 0,
            "held": done_rate >= p.get("hold_ratio", 0.9) * rate and not load.shed,
            "client_lag_ms": pcts([x * 1000 for x in load.lags], 1),
            "tokens_in_window": tokens,
            "cpu_s": cpu,
            "cpu_ms_per_task": per_task_ms(cpu, len(done_in)),
            "worker_us_per_chunk_avg": round(cpu.get("worker", 0) / tokens * 1e6, 1) if tokens else None,
            "rss_mb_max": rss_max,
            "rss_web_worker_mb": round(rss_max.get("web", 0) + rss_max.get("worker", 0), 1),
        }
        steps.append(step)
        if not step["held"]:
            break
    ctx.profile_wait()
    # Wind down within bounded time: the answers to what was sent, then the backlog of a
    # configuration that could not keep up is cancelled (it never starts), then the followed
    # streams get the time their LLM needs; whatever is still open after that is cut.
    created: list[Created] = await asyncio.gather(*post_tasks)
    try:
        async with asyncio.timeout(p.get("cancel_backlog_s", 30)):
            cancelled = await cancel_backlog(api, created_after=t_start - 1)
    except TimeoutError:
        cancelled = -1
    _, pending = await asyncio.wait(follow_tasks, timeout=llm_s + p.get("follow_grace_s", 10)) if follow_tasks \
        else (set(), set())
    for f in follows:
        if not f.ended and not f.error:
            f.error = "unfinished"
    for task in pending:
        task.cancel()
    stop_sampling.set()
    await sampler
    records = await api.sim_records(t_start - 1)
    llm_errors = sum(1 for r in records if r.get("status") in ("error", "aborted"))
    failed = await api.list_tasks(created_after=t_start - 1, status="failed")
    check = await verify_follows(api, follows)
    rows = await api.list_tasks(created_after=t_start - 1)
    pickup = []
    top_rate = steps[-1]["rate"]
    for row in rows:
        s, c = parse_ts(row.get("started_at")), parse_ts(row.get("created_at"))
        if s and c:
            pickup.append((s - c) * 1000)
    best = max(steps, key=lambda s: s["completed_per_s"])
    top = steps[-1]
    summary = {
        "tasks_per_s": best["completed_per_s"],
        "in_flight": max(s["in_flight_llm_median"] or 0 for s in steps),
        "in_flight_max": max(s["in_flight_llm_max"] for s in steps),
        "top_rate": top_rate, "top_held": top["held"],
        "rss_web_worker_mb": top["rss_web_worker_mb"],
        **{f"rss_{k}_mb": v for k, v in top["rss_mb_max"].items()},
        **{f"cpu_ms_per_task_{k}": v for k, v in top["cpu_ms_per_task"].items()},
        "worker_us_per_chunk_avg": top["worker_us_per_chunk_avg"],
        "worker_us_per_chunk_marginal": chunk["marginal_us_per_chunk"] if chunk else None,
        "worker_us_per_chunk_marginal_dense":
            (chunk.get("dense") or {}).get("marginal_us_per_chunk") if chunk else None,
        "errors": sum(c.failed for c in created) + len(failed) + llm_errors + check["broken"],
        "lost": check["lost"], "repeated": check["repeated"],
        "followed_sse": check["sse"], "followed_ws": check["ws"], "unfinished_streams": check["unfinished"],
        "shed": shed + sum(c.refused for c in created), "refused": sum(c.refused for c in created),
        "pickup_p50_ms": percentile(pickup, 50), "pickup_p99_ms": percentile(pickup, 99),
    }
    # How long a follower waited from opening its stream to its first event (subscribed, replay
    # read), per transport: where a loaded web process makes clients wait.
    waits = {t: [(f.ready_at - f.opened_at) * 1000 for f in follows if f.transport == t and f.ready_at]
             for t in ("sse", "ws")}
    follow_open = {t: pcts(w) for t, w in waits.items()}
    summary["follow_open_p99_ms"] = percentile(waits["sse"] + waits["ws"], 99)
    return {"summary": summary, "steps": steps, "chunk_cost": chunk, "events_check": check,
            "follow_open_ms": follow_open,
            "tasks": len(created), "post_errors": sum(c.failed for c in created),
            "error_examples": list({c.error or str(c.status) for c in created if c.failed})[:3],
            "failed_tasks": len(failed), "llm_errors": llm_errors, "cancelled_backlog": cancelled, "shed": shed}


# --- 4. cancel -----------------------------------------------------------------------------------
async def scenario_cancel(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    api = ctx.api
    sem = asyncio.Semaphore(p.get("concurrency", 5))
    t_start = time.time()

    async def one(i: int) -> dict[str, Any]:
        async with sem:
            key = f"{ctx.nonce}-cancel-{i}"
            created = await api.create(sim_prompt("cancel", key=key, **p["llm"]))
            if not created.ok:
                return {"key": key, "error": created.error or created.status}
            f = Follow(created.task_id, "sse" if i % 2 == 0 else "ws", key=key)
            follower = asyncio.ensure_future(api.follow(f, timeout=60))
            try:
                await asyncio.wait_for(f.first_chunk.wait(), 30)
            except TimeoutError:
                follower.cancel()
                return {"key": key, "error": "no first chunk"}
            t_cancel = time.time()
            status, took = await api.cancel(created.task_id)
            await follower
            done = f.first("done")
            return {"key": key, "t_cancel": t_cancel, "http": status, "cancel_call_ms": took * 1000,
                    "final": done[1].get("status") if done else None, "follow": f}

    results = await asyncio.gather(*(one(i) for i in range(p["n"])))
    # The API answers a cancel once the task's log is closed, which need not wait for the
    # worker (the web closes the log itself after CANCEL_WAIT_S): give the provider streams
    # time to be closed before reading the simulator's records.
    keys = {r["key"] for r in results if "error" not in r}
    deadline = time.time() + p.get("close_wait_s", 10)
    while True:
        records = {r["key"]: r for r in await api.sim_records(t_start - 1)}
        if time.time() > deadline or all(records.get(k, {}).get("status") != "streaming" for k in keys):
            break
        await asyncio.sleep(0.2)
    lat, call, not_closed = [], [], 0
    errors = 0
    for res in results:
        if "error" in res:
            errors += 1
            continue
        rec = records.get(res["key"]) or {}
        call.append(res["cancel_call_ms"])
        errors += int(res["http"] != 200 or res["final"] != "cancelled")
        if rec.get("closed_at"):
            lat.append((rec["closed_at"] - res["t_cancel"]) * 1000)
        else:
            not_closed += 1
    check = await verify_follows(api, [r["follow"] for r in results if "follow" in r])
    stats = pcts(lat)
    return {"summary": {"p50_ms": stats["p50"], "p99_ms": stats["p99"], "not_closed": not_closed,
                        "cancel_call_p50_ms": percentile(call, 50), "errors": errors,
                        "lost": check["lost"], "repeated": check["repeated"]},
            "cancel_to_closed_ms": stats, "cancel_call_ms": pcts(call), "events_check": check}


# --- 5. fan-out ----------------------------------------------------------------------------------
_TOKEN = re.compile(r"tok(\d+) ")


async def scenario_fanout(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    api = ctx.api
    llm = p["llm"]
    key = f"{ctx.nonce}-fanout"
    created = await api.create(sim_prompt("fanout", key=key, **llm))
    if not created.ok:
        return {"summary": {"errors": 1}, "error": created.error}
    t_post = time.time()
    subs = [Follow(created.task_id, "ws", key=key) for _ in range(p["subscribers"])]
    gate = asyncio.Semaphore(p.get("connect_concurrency", 50))
    total_s = (llm["ttft_ms"] + llm["tokens"] * llm["interval_ms"]) / 1000 + 60

    async def sub(f: Follow) -> Follow:
        await gate.acquire()
        runner = asyncio.ensure_future(api.follow(f, timeout=total_s))
        try:
            await asyncio.wait_for(f.ready.wait(), 60)
        except TimeoutError:
            pass
        gate.release()
        return await runner

    runners = [asyncio.ensure_future(sub(f)) for f in subs]
    await asyncio.wait_for(asyncio.gather(*(f.ready.wait() for f in subs)), 90)
    all_ready = time.time()
    snap0 = ctx.snapshot()
    stream_end = t_post + (llm["ttft_ms"] + llm["tokens"] * llm["interval_ms"]) / 1000
    ctx.profile_start(stream_end - all_ready + 1, "fanout")
    await asyncio.gather(*runners)
    snap1 = ctx.snapshot()
    ctx.profile_wait()
    recs = [r for r in await api.sim_records(t_post - 5) if r["key"] == key]
    rec = recs[0] if recs else {}
    first = rec.get("first_token_at")
    interval = llm["interval_ms"] / 1000.0
    lat: list[float] = []
    first_token_lat: list[float] = []
    late_tokens = 0
    frames = 0
    for f in subs:
        for t, e in f.events:
            if e.get("type") != "chunk" or first is None:
                continue
            frames += 1
            for m in _TOKEN.finditer(e.get("content") or ""):
                i = int(m.group(1))
                token_at = first + i * interval
                if f.ready_at is not None and f.ready_at > token_at:
                    late_tokens += 1
                    continue
                lat.append((t - token_at) * 1000)
                if i == 0:
                    first_token_lat.append((t - token_at) * 1000)
    sim_lag = None
    if first and rec.get("last_token_at") and rec.get("tokens_sent"):
        sim_lag = round((rec["last_token_at"] - first - (rec["tokens_sent"] - 1) * interval) * 1000, 1)
    check = await verify_follows(api, subs)
    cpu = cpu_delta(snap0, snap1)
    stats = pcts(lat)
    return {"summary": {"p50_ms": stats["p50"], "p99_ms": stats["p99"], "subscribers": len(subs),
                        "connect_s": round(all_ready - t_post, 2),
                        "subscribed_before_first_token": sum(1 for f in subs if f.ready_at and first
                                                             and f.ready_at <= first),
                        "late_tokens": late_tokens, "lost": check["lost"], "repeated": check["repeated"],
                        "errors": check["broken"],
                        "web_us_per_frame": round(cpu.get("web", 0) / frames * 1e6, 1) if frames else None},
            "token_to_subscriber_ms": stats, "first_token_to_subscriber_ms": pcts(first_token_lat),
            "frames": frames, "sim_lag_ms": sim_lag, "cpu_s": cpu, "events_check": check}


# --- warm-up (not measured) ----------------------------------------------------------------------
async def scenario_warmup(ctx: Ctx) -> dict[str, Any]:
    """Touch every code path once (enqueue, pickup, streaming, SSE, WebSocket, cancel) so that
    lazy imports, connection pools and caches are warm before anything is measured."""
    api = ctx.api
    follows: list[Follow] = []

    async def one(i: int) -> Created:
        created = await api.create(sim_prompt("warmup", tokens=10, interval_ms=5))
        if created.ok:
            f = Follow(created.task_id, "sse" if i % 2 == 0 else "ws")
            follows.append(f)
            await api.follow(f, timeout=60)
        return created

    load = await open_loop(ctx.params.get("rate", 20), ctx.params.get("seconds", 1.0), one)
    created = await asyncio.gather(*load.tasks)
    slow = await api.create(sim_prompt("warmup", tokens=100, interval_ms=50))
    if slow.ok:
        await asyncio.sleep(0.3)
        await api.cancel(slow.task_id)
    await drain(api, 30)
    check = await verify_follows(api, follows)
    return {"summary": {"errors": sum(1 for c in created if not c.ok) + check["broken"]}}


# --- 6. the OpenAI-compatible API ------------------------------------------------------------------
async def scenario_openai(ctx: Ctx) -> dict[str, Any]:
    """The same streamed tasks through the native API (POST /tasks, then its SSE stream) and
    through /v1 (a streamed chat completion, which derives its chunks from the same event
    log): the web's and the worker's CPU per task on each path."""
    p, api = ctx.params, ctx.api
    llm = p["llm"]
    phases: dict[str, Any] = {}
    errors = 0
    for path in ("native", "v1"):
        follows: list[Follow] = []
        texts: list[tuple[bool, str, str]] = []
        snap0 = ctx.snapshot()

        async def one(i: int, path: str = path, follows: list[Follow] = follows,
                      texts: list[tuple[bool, str, str]] = texts) -> bool:
            prompt = sim_prompt(f"openai-{path}", **llm)
            if path == "v1":
                outcome = await api.chat_stream(prompt)
                texts.append(outcome)
                return outcome[0]
            created = await api.create(prompt, model="gpt-4o-mini")
            if not created.ok:
                return False
            f = Follow(created.task_id, "sse")
            follows.append(f)
            await api.follow(f, timeout=p.get("follow_timeout_s", 60))
            return not f.error and f.ended

        load = await open_loop(p["rate"], p["step_s"], one, max_outstanding=p.get("max_outstanding", 400))
        done = await asyncio.gather(*load.tasks)
        await drain(api, p.get("drain_s", 30))
        cpu = cpu_delta(snap0, ctx.snapshot())
        n_ok = sum(1 for ok in done if ok)
        errors += len(done) - n_ok + load.shed
        per_task = per_task_ms(cpu, n_ok)
        phases[path] = {"tasks": len(done), "ok": n_ok, "shed": load.shed, "cpu_ms_per_task": per_task,
                        "cpu_ms_per_task_web_worker": round((per_task.get("web") or 0) + (per_task.get("worker") or 0),
                                                            3) if n_ok else None,
                        "errors": [t[2] for t in texts if not t[0]][:5] + [f.error for f in follows if f.error][:5]}
    native, v1 = phases["native"]["cpu_ms_per_task_web_worker"], phases["v1"]["cpu_ms_per_task_web_worker"]
    summary = {"native_cpu_ms_per_task": native, "v1_cpu_ms_per_task": v1,
               "v1_cpu_pct_of_native": round(100.0 * v1 / native, 1) if native and v1 else None, "errors": errors}
    return {"summary": summary, "phases": phases}


# --- 7. fairness (issue 20) --------------------------------------------------------------------------
async def _post_all(api: Api, prompts: list[str], concurrency: int) -> list[Created]:
    sem = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> Created:
        async with sem:
            return await api.create(prompt)

    return await asyncio.gather(*(one(p) for p in prompts))


async def _finished(api: Api, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """The tasks once every one ended (or the timeout passed: then as they are)."""
    deadline = time.time() + timeout
    while True:
        tasks = [t for t in await asyncio.gather(*(api.get_task(i) for i in ids)) if t]
        if time.time() > deadline or all(t["status"] in ("completed", "failed", "cancelled") for t in tasks):
            return tasks
        await asyncio.sleep(0.25)


def _pickup_ms(task: dict[str, Any]) -> float | None:
    started, created = parse_ts(task.get("started_at")), parse_ts(task.get("created_at"))
    return (started - created) * 1000 if started and created else None


async def _flood(ctx: Ctx, other: Api, p: dict[str, Any]) -> dict[str, Any]:
    """One tenant posts a flood of long tasks; another then posts a few one-line tasks:
    how long the latecomers wait to start."""
    t0 = time.time()
    flood = await _post_all(ctx.api, [sim_prompt(f"flood {i}", **p["flood_llm"]) for i in range(p["flood_n"])],
                            p.get("post_concurrency", 50))
    posted_s = time.time() - t0
    await asyncio.sleep(p.get("gap_s", 1.0))
    late = await _post_all(other, [sim_prompt(f"late {i}", tokens=1) for i in range(p["late_n"])], p["late_n"])
    done = await _finished(other, [c.task_id for c in late if c.ok], p.get("late_timeout_s", 120))
    pickups = [ms for ms in map(_pickup_ms, done) if ms is not None]
    m = await ctx.api.queue_metrics()
    cancelled = await cancel_backlog(ctx.api, created_after=t0 - 1)
    await drain(ctx.api, p.get("drain_s", 60))
    return {"flood_posted": sum(c.ok for c in flood), "flood_post_errors": sum(not c.ok for c in flood),
            "flood_post_s": round(posted_s, 1), "late_completed": sum(t["status"] == "completed" for t in done),
            "late_pickup_ms": pcts(pickups), "late_pickup_max_ms": round(max(pickups), 1) if pickups else None,
            "flood_waiting_then": m.get("waiting"), "flood_fair_then": m.get("fair"), "flood_cancelled": cancelled}


async def _shares(ctx: Ctx, other: Api, p: dict[str, Any]) -> dict[str, Any]:
    """Two tenants at equal weights keep a backlog, one of tasks `ratio` times longer: the
    tokens each is served over the window (tasks that completed in it)."""
    t0 = time.time()
    long_llm, short_llm = p["long_llm"], p["short_llm"]
    long_p = [sim_prompt(f"long {i}", **long_llm) for i in range(p["long_n"])]
    short_p = [sim_prompt(f"short {i}", **short_llm) for i in range(p["short_n"])]
    posted = await asyncio.gather(_post_all(ctx.api, long_p, 25), _post_all(other, short_p, 25))
    t_open = time.time()
    await asyncio.sleep(p["window_s"])
    t_close = time.time()
    served: dict[str, dict[str, float]] = {}
    for name, api in (("long", ctx.api), ("short", other)):
        tasks = await api.list_tasks(created_after=t0 - 1, status="completed")
        inside = [t for t in tasks if t_open <= (parse_ts(t.get("completed_at")) or 0) < t_close]
        served[name] = {"tasks": len(inside),
                        "tokens": sum((t.get("result") or {}).get("tokensUsed") or 0 for t in inside)}
        await cancel_backlog(api, created_after=t0 - 1)
    await drain(ctx.api, p.get("drain_s", 60))
    await drain(other, p.get("drain_s", 60))
    lo, hi = sorted(served[k]["tokens"] for k in served)
    return {"posted": [sum(c.ok for c in batch) for batch in posted], "window_s": p["window_s"], "served": served,
            "token_ratio": round(hi / lo, 3) if lo else None}


async def scenario_fairness(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    async with Api(ctx.spec["web"], ctx.spec["sim"], ctx.spec["keys"][0]) as other:
        out: dict[str, Any] = {}
        if "flood" in p.get("phases", ("flood", "shares")):
            out["flood"] = await _flood(ctx, other, p)
        if "shares" in p.get("phases", ("flood", "shares")):
            out["shares"] = await _shares(ctx, other, p)
    flood, shares = out.get("flood", {}), out.get("shares", {})
    out["summary"] = {"late_pickup_p50_ms": flood.get("late_pickup_ms", {}).get("p50"),
                      "late_pickup_p99_ms": flood.get("late_pickup_ms", {}).get("p99"),
                      "token_ratio": shares.get("token_ratio")}
    return out


SCENARIOS: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "warmup": scenario_warmup,
    "enqueue": scenario_enqueue,
    "overhead": scenario_overhead,
    "capacity": scenario_capacity,
    # The capacity scenario with a 35 s LLM at one rate: over 1,000 tasks open at once.
    "inflight": scenario_capacity,
    "cancel": scenario_cancel,
    "fanout": scenario_fanout,
    "openai": scenario_openai,
    "fairness": scenario_fairness,
}


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    async with Api(spec["web"], spec["sim"], spec["key"]) as api:
        ctx = Ctx(spec, api)
        t0 = time.time()
        snap0 = ctx.snapshot()
        load0 = os.getloadavg()[0]
        result = await SCENARIOS[spec["scenario"]](ctx)
        elapsed = time.time() - t0
        result["duration_s"] = round(elapsed, 1)
        result["cpu_s_total"] = cpu_delta(snap0, ctx.snapshot())
        result["other_load_cores"] = round(result["cpu_s_total"]["other processes"] / max(elapsed, 1e-9), 2)
        result["loadavg_1m"] = [load0, os.getloadavg()[0]]
        if "summary" in result:
            result["summary"]["other_load_cores"] = result["other_load_cores"]
        return result


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print("usage: python -m bench.loadgen SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = orjson.loads(Path(args[0]).read_bytes())
    try:
        import uvloop

        result = uvloop.run(_main(spec))
    except ImportError:  # pragma: no cover - uvloop is in requirements
        result = asyncio.run(_main(spec))
    Path(args[1]).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
