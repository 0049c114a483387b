"""In-process CPU probes: the CPU one code path costs, without the noise of a full stack.

    python -m bench.probe post                 # POST /tasks through the ASGI app, in-process
    python -m bench.probe execute              # executor.execute(), one task at a time
    python -m bench.probe stream               # K concurrent tasks: CPU per streamed chunk
    python -m bench.probe families             # the provider call alone, per wire protocol
    python -m bench.probe all --repeat 3       # each of them, 3 times, medians printed

The full benchmark (`python -m bench run`) measures the service as separate processes,
which is the truth but moves by ±15-50% between runs on a shared 2-core machine. A probe
runs one path of the real code in this process against the real PostgreSQL, Redis and
LLM simulator (a separate process, so its CPU is not counted) and reads this process's
`time.process_time()`: every thread of it, the event loop's included. Use it to decide
a change (run it before and after, interleaved); use the benchmark to report.

What is left out, by design: daphne and Twisted (the `post` probe calls the ASGI
application directly; ~0.9 ms per request measured under daphne), and Celery's consumer
(`execute` and `stream` call what the Celery task calls).

- post:    N sequential `POST /tasks` (a 1-token task each; the worker is not running,
           so nothing else runs here): CPU ms per request.
- execute: N tasks (1 token, no latency) created first, then executed one after
           another: CPU ms per task (routing, start, the stream, complete, spend).
- stream:  K threads each executing tasks of T tokens spread over D ms, for T=10 and
           T=200: (CPU at 200 - CPU at 10) / (190 * tasks) is the marginal CPU of one
           chunk read from the provider (parse, coalesce, publish), per-task costs
           cancelling out; K=100, D=4000 is the benchmark's dense regime. The same over
           the event-loop thread alone (loop_us_per_chunk_marginal) is steadier: the
           Celery-thread work per task, which varies, is not in it.
- families: providers.llm.stream_chat alone (no task, no events), K concurrent calls of
           T=10 and T=200 tokens against the simulator speaking each family's protocol:
           OpenAI-compatible, Anthropic, Gemini and Cohere (all direct), and Gemini once
           more through litellm.acompletion (`gemini_litellm`, the path it replaced, for a
           same-sitting comparison). Marginal CPU per chunk read from the provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .client import API, sim_prompt
from .stack import Proc, _get, base_env, db_fresh, infra_setup, template_prepare, wait_ready

PROBES = ("post", "execute", "stream", "families")


def _setup(db_name: str = "mageagent_probe", redis_db: int = 13) -> tuple[Any, Proc, str]:
    """A fresh probe database and Redis db, the simulator, Django configured on them."""
    from devtools.infra import free_port

    infra = infra_setup(db_name=db_name, redis_db=redis_db)
    env = base_env()
    key = template_prepare(infra, env, infra.workdir / "probe.log")
    db_url = db_fresh(infra)
    port = free_port()
    sim = Proc("simulator", [sys.executable, "devtools/simulator/server.py", "--port", str(port)], env,
               infra.workdir / "simulator.log")
    wait_ready(lambda: _get(f"http://127.0.0.1:{port}/_sim/health")[0] == 200, "simulator",
               time.monotonic() + 30, [sim])
    os.environ.update({**env, "DATABASE_URL": db_url, "REDIS_URL": infra.redis_url,
                       "MAGEAGENT_QUEUE": f"mageagent-probe-{os.getpid()}",
                       "MAGEAGENT_LLM_API_BASE": f"http://127.0.0.1:{port}/v1"})
    import django

    django.setup(set_prefix=False)
    return infra, sim, key


def _cpu_per(n: int, run: Callable[[], None]) -> float:
    t0 = time.process_time()
    run()
    return (time.process_time() - t0) / n


# --- post -----------------------------------------------------------------------------------------
def probe_post(key: str, n: int, warmup: int) -> dict[str, float]:
    from channels.testing import HttpCommunicator

    from mageagent.asgi import application

    body = json.dumps({"prompt": sim_prompt("probe", tokens=1)}).encode()
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {key}".encode()), (b"content-length", str(len(body)).encode())]

    async def many(count: int) -> None:
        for _ in range(count):
            communicator = HttpCommunicator(application, "POST", f"{API}/tasks", body=body, headers=headers)
            response = await communicator.get_response(timeout=30)
            await communicator.wait(timeout=30)  # the handler's own end, within the measure
            if response["status"] != 202:
                raise RuntimeError(f"POST /tasks answered {response['status']}: {response['body'][:300]!r}")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(many(warmup))  # warm-up: imports, pools, caches
    cpu = _cpu_per(n, lambda: loop.run_until_complete(many(n)))
    loop.close()
    return {"cpu_ms_per_post": cpu * 1000}


# --- execute and stream ---------------------------------------------------------------------------
def _create(tenant: Any, count: int, **directive: Any) -> list[str]:
    from tasks import services

    return [str(services.task_create(tenant=tenant, prompt=sim_prompt("probe", **directive))[0].id)
            for _ in range(count)]


def _execute_all(ids: list[str], threads: int) -> None:
    from tasks.models import Task, TaskStatus
    from tasks.runtime import executor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(executor.execute, ids))
    done = Task.objects.filter(pk__in=ids, status=TaskStatus.COMPLETED).count()
    if done != len(ids):
        raise RuntimeError(f"{len(ids) - done} of {len(ids)} probe tasks did not complete")


def probe_execute(tenant: Any, n: int, warmup: int) -> dict[str, float]:
    _execute_all(_create(tenant, warmup, tokens=1), 1)  # warm-up
    ids = _create(tenant, n, tokens=1)
    return {"cpu_ms_per_task": _cpu_per(n, lambda: _execute_all(ids, 1)) * 1000}


def _loop_cpu() -> float:
    """CPU seconds of the worker runtime's event-loop thread so far (every stream's I/O)."""
    from tasks.runtime.loop import runtime

    async def now() -> float:
        return time.thread_time()

    return asyncio.run_coroutine_threadsafe(now(), runtime.ensure_started()).result()


def probe_stream(tenant: Any, streams: int, duration_ms: int, rounds: int) -> dict[str, float]:
    _execute_all(_create(tenant, streams, tokens=10, duration_ms=500), streams)  # warm-up
    count = streams * rounds
    cpu: dict[int, float] = {}
    loop: dict[int, float] = {}
    for tokens in (10, 200):
        ids = _create(tenant, count, tokens=tokens, duration_ms=duration_ms)
        loop0 = _loop_cpu()
        cpu[tokens] = _cpu_per(count, lambda ids=ids: _execute_all(ids, streams))
        loop[tokens] = (_loop_cpu() - loop0) / count
    return {"cpu_ms_per_task_10_tokens": cpu[10] * 1000, "cpu_ms_per_task_200_tokens": cpu[200] * 1000,
            "cpu_us_per_chunk_marginal": (cpu[200] - cpu[10]) / 190 * 1e6,
            "loop_ms_per_task_200_tokens": loop[200] * 1000,
            "loop_us_per_chunk_marginal": (loop[200] - loop[10]) / 190 * 1e6}


# --- families -------------------------------------------------------------------------------------
def _family_deployments(sim_url: str) -> dict[str, Any]:
    from providers.llm import Deployment

    return {
        "openai": Deployment(model="gpt-4o-mini", provider="openai", litellm_model="openai/gpt-4o-mini",
                             api_base=f"{sim_url}/v1", api_key="sim", openai_compatible=True),
        "anthropic": Deployment(model="claude-haiku-4-5", provider="anthropic",
                                litellm_model="anthropic/claude-haiku-4-5", api_base=sim_url, api_key="sim"),
        "gemini": Deployment(model="gemini-2.5-flash", provider="gemini", litellm_model="gemini/gemini-2.5-flash",
                             api_base=f"{sim_url}/v1beta", api_key="sim"),
        "cohere": Deployment(model="command-r7b-12-2024", provider="cohere_chat",
                             litellm_model="cohere_chat/command-r7b-12-2024", api_base=f"{sim_url}/v2/chat",
                             api_key="sim"),
    }


async def _calls(deployment: Any, streams: int, tokens: int, duration_ms: int, via_litellm: bool = False) -> None:
    from providers.llm import _stream_litellm, request_body, stream_chat

    messages = [{"role": "user", "content": sim_prompt("probe", tokens=tokens, duration_ms=duration_ms)}]

    async def one() -> None:
        text = ""
        deltas = (_stream_litellm(deployment, request_body(deployment, messages, None, None)) if via_litellm
                  else stream_chat(deployment, messages))
        async for delta in deltas:
            text += delta.content or ""
        if text.count("tok") != tokens:
            raise RuntimeError(f"{deployment.provider}: {text.count('tok')} of {tokens} tokens arrived")

    await asyncio.gather(*(one() for _ in range(streams)))


def probe_families(streams: int, duration_ms: int, rounds: int) -> dict[str, float]:
    from providers.llm import close_sessions

    sim_url = os.environ["MAGEAGENT_LLM_API_BASE"].removesuffix("/v1")
    loop = asyncio.new_event_loop()
    result: dict[str, float] = {}
    try:
        deployments = _family_deployments(sim_url)
        runs = [(family, deployment, False) for family, deployment in deployments.items()]
        runs.append(("gemini_litellm", deployments["gemini"], True))
        for family, deployment, via_litellm in runs:
            loop.run_until_complete(_calls(deployment, streams, 10, min(duration_ms, 500), via_litellm))  # warm-up
            cpu: dict[int, float] = {}
            for tokens in (10, 200):
                def run(tokens: int = tokens, deployment: Any = deployment, via_litellm: bool = via_litellm) -> None:
                    for _ in range(rounds):
                        loop.run_until_complete(_calls(deployment, streams, tokens, duration_ms, via_litellm))
                cpu[tokens] = _cpu_per(streams * rounds, run)
            result[f"{family}_us_per_chunk"] = (cpu[200] - cpu[10]) / 190 * 1e6
        loop.run_until_complete(close_sessions())
    finally:
        loop.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=(*PROBES, "all"))
    parser.add_argument("--n", type=int, default=300, help="requests (post) or tasks (execute); default 300")
    parser.add_argument("--streams", type=int, default=100, help="stream: concurrent tasks (default 100)")
    parser.add_argument("--duration-ms", type=int, default=4000, help="stream: LLM duration (default 4000)")
    parser.add_argument("--rounds", type=int, default=2, help="stream: tasks per thread (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="run each probe this many times")
    parser.add_argument("--warmup", type=int, default=200, help="post/execute: unmeasured calls first (default 200)")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    # Several people probing one machine at once need a database and a Redis db each (the
    # Redis db is flushed at the start).
    parser.add_argument("--db-name", default="mageagent_probe", help="PostgreSQL database (default mageagent_probe)")
    parser.add_argument("--redis-db", type=int, default=13, help="Redis database number, flushed (default 13)")
    args = parser.parse_args(argv)

    infra, sim, key = _setup(args.db_name, args.redis_db)
    try:
        from mageagent.tenancy.auth import tenant_for_key

        tenant = tenant_for_key(key)
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeat):
            for probe in PROBES if args.probe == "all" else (args.probe,):
                if probe == "post":
                    result = probe_post(key, args.n, args.warmup)
                elif probe == "execute":
                    result = probe_execute(tenant, args.n, args.warmup)
                elif probe == "families":
                    result = probe_families(args.streams, args.duration_ms, args.rounds)
                else:
                    result = probe_stream(tenant, args.streams, args.duration_ms, args.rounds)
                results.setdefault(probe, []).append(result)
                print(f"{probe}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
        if args.repeat > 1:
            for probe, runs in results.items():
                medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                print(f"{probe} median of {len(runs)}: " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        from django.db import connections

        from providers.llm import close_sessions
        from tasks.runtime.loop import runtime

        if runtime.loop is not None:  # the worker loop's provider sessions, closed on their loop
            asyncio.run_coroutine_threadsafe(close_sessions(), runtime.loop).result(10)
        connections.close_all()
        sim.stop()
        infra.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
