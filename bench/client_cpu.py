"""Micro-benchmark: client-side CPU per streamed chunk for the worker's LLM client options.

    python bench/client_cpu.py            # ~1.5-3 min on the 2-core dev box

Starts the LLM simulator (mageagent/simulator, a separate process) and measures
``time.process_time()`` of *this* process (the client) per SSE chunk received:

* bulk:      one 5,000-token stream, interval 0 (reads carry many events),
             under the default asyncio loop and under uvloop;
* realistic: 200 concurrent streams x 100 tokens, interval 20 ms, closed loop
             (each of 200 slots starts its next stream when one ends; one
             shared client, keep-alive connections reused; reads carry ~1
             event), uvloop only; CPU sampled over 3 windows of 2 s after the
             ramp-up.  The cell also shows the client's CPU use (% of a core)
             and the chunk rate achieved (% of the ideal 10,000/s): CPU near
             100% / rate well below 100% means the client is saturated.

Known effect (httpcore 1.0.9, used by httpx, openai and litellm): every request
start/finish runs ``_assign_requests_to_connections``, which costs O(idle x
all connections) (encode/httpcore#1035).  With ~200 keep-alive connections in
one pool this can tip into a self-sustaining collapse (assigned-but-not-started
connections count as idle, making every pass slower), which shows up in the
realistic column of the httpx-based rows.

Strategies: (a) litellm.acompletion(stream=True); (b) openai.AsyncOpenAI;
(c) httpx .stream() + aiter_lines() + json/orjson.loads; (d) aiohttp iterating
resp.content line by line + orjson; (e) raw byte chunks (aiohttp iter_any /
httpx aiter_raw) split on b"\\n\\n" by hand + orjson.  Every strategy also
accumulates the delta content (what a worker does) and the result is checked.
Client creation and imports are excluded; each bulk cell is the median of 3
runs after one warm-up run.  Each event loop runs in its own child process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the model map

ROOT = Path(__file__).resolve().parent.parent
BULK_TOKENS = 5000
REAL_STREAMS, REAL_TOKENS, REAL_INTERVAL_MS = 200, 100, 20
REPS = 3
WINDOW_S = 2.0

STRATEGIES = {
    "a_litellm": "(a) litellm acompletion",
    "b_openai": "(b) openai AsyncOpenAI",
    "c_httpx_lines_json": "(c) httpx aiter_lines + json",
    "c_httpx_lines_orjson": "(c) httpx aiter_lines + orjson",
    "d_aiohttp_lines_orjson": "(d) aiohttp content lines + orjson",
    "e_aiohttp_raw_orjson": "(e) aiohttp iter_any + split + orjson",
    "e_httpx_raw_orjson": "(e) httpx aiter_raw + split + orjson",
}
REALISTIC = list(STRATEGIES)  # brief asks for c, d, e; a and b are cheap to add


def _load_simulator():
    """Import mageagent/simulator/server.py without importing the mageagent package."""
    spec = importlib.util.spec_from_file_location("_sim_server", ROOT / "mageagent/simulator/server.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_sim_server"] = mod
    spec.loader.exec_module(mod)
    return mod


def expected_text(n: int) -> str:
    return "".join(f"tok{i} " for i in range(n))


def messages(tokens: int, interval_ms: float) -> list[dict]:
    d = json.dumps({"tokens": tokens, "interval_ms": interval_ms})
    return [{"role": "user", "content": f"benchmark [[sim {d}]]"}]


def body(tokens: int, interval_ms: float) -> dict:
    return {"model": "sim", "stream": True, "messages": messages(tokens, interval_ms)}


# --------------------------------------------------------------------------- the lean SSE parser (e)


def _slow_event(block: bytes) -> bytes | None:
    """Generic SSE event -> data payload (multi-line data, CRLF, comments, 'data:' w/o space)."""
    data = []
    for line in block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            v = line[5:]
            data.append(v[1:] if v.startswith(b" ") else v)
    return b"\n".join(data) if data else None


class SSESplitter:
    """Incremental SSE splitter: feed raw bytes, get complete data payloads.

    Events split across reads are kept in ``buf``.  Fast path: OpenAI's
    ``data: {...}\\n\\n`` single-line events.
    """

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self.buf:
            data = self.buf + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        blocks = data.split(b"\n\n")
        self.buf = blocks.pop()
        out = []
        for b in blocks:
            if b.startswith(b"data: ") and b.find(b"\n") == -1:
                out.append(b[6:])
            elif b:
                p = _slow_event(b)
                if p is not None:
                    out.append(p)
        return out


# --------------------------------------------------------------------------- strategies
# Each factory returns (one_stream(tokens, interval_ms) -> (text, chunks), aclose).


async def make_litellm(base_url: str):
    import litellm

    litellm.turn_off_message_logging = True
    litellm.suppress_debug_info = True
    for name in (
        "callbacks",
        "success_callback",
        "failure_callback",
        "_async_success_callback",
        "_async_failure_callback",
        "input_callback",
        "service_callback",
    ):
        setattr(litellm, name, [])

    async def one(tokens: int, interval_ms: float, ctr: list[int]):
        resp = await litellm.acompletion(
            model="openai/sim",
            api_base=base_url + "/v1",
            api_key="sim",
            messages=messages(tokens, interval_ms),
            stream=True,
        )
        parts = []
        async for ch in resp:
            ctr[0] += 1
            if ch.choices:
                c = ch.choices[0].delta.content
                if c:
                    parts.append(c)
        return "".join(parts)

    async def close():
        pass

    return one, close


async def make_openai(base_url: str):
    import httpx
    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url + "/v1",
        api_key="sim",
        max_retries=0,
        http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000)),
    )

    async def one(tokens: int, interval_ms: float, ctr: list[int]):
        s = await client.chat.completions.create(model="sim", messages=messages(tokens, interval_ms), stream=True)
        parts = []
        async for ch in s:
            ctr[0] += 1
            if ch.choices:
                c = ch.choices[0].delta.content
                if c:
                    parts.append(c)
        return "".join(parts)

    return one, client.close


def _content(obj: dict, parts: list) -> None:
    choices = obj.get("choices")
    if choices:
        c = choices[0]["delta"].get("content")
        if c:
            parts.append(c)


async def make_httpx_lines(base_url: str, loads):
    import httpx

    client = httpx.AsyncClient(
        base_url=base_url, limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000), timeout=60
    )

    async def one(tokens: int, interval_ms: float, ctr: list[int]):
        parts = []
        async with client.stream("POST", "/v1/chat/completions", json=body(tokens, interval_ms)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    payload = line[6:]
                    if payload == "[DONE]":
                        continue  # drain to EOF: breaking early would close (not reuse) the connection
                    ctr[0] += 1
                    _content(loads(payload), parts)
        return "".join(parts)

    return one, client.aclose


async def make_aiohttp(base_url: str, raw: bool):
    import aiohttp
    import orjson

    session = aiohttp.ClientSession(
        base_url=base_url, connector=aiohttp.TCPConnector(limit=1000), timeout=aiohttp.ClientTimeout(total=60)
    )
    loads = orjson.loads

    async def one_lines(tokens: int, interval_ms: float, ctr: list[int]):
        parts = []
        async with session.post("/v1/chat/completions", data=orjson.dumps(body(tokens, interval_ms))) as r:
            async for line in r.content:  # one line at a time (incl. the blank separators)
                if line.startswith(b"data: "):
                    payload = line[6:].rstrip(b"\r\n")
                    if payload == b"[DONE]":
                        continue  # drain to EOF: breaking early would close (not reuse) the connection
                    ctr[0] += 1
                    _content(loads(payload), parts)
        return "".join(parts)

    async def one_raw(tokens: int, interval_ms: float, ctr: list[int]):
        parts = []
        sse = SSESplitter()
        async with session.post("/v1/chat/completions", data=orjson.dumps(body(tokens, interval_ms))) as r:
            async for data in r.content.iter_any():
                for payload in sse.feed(data):
                    if payload == b"[DONE]":
                        continue  # drain to EOF: breaking early would close (not reuse) the connection
                    ctr[0] += 1
                    _content(loads(payload), parts)
        return "".join(parts)

    return (one_raw if raw else one_lines), session.close


async def make_httpx_raw(base_url: str):
    import httpx
    import orjson

    client = httpx.AsyncClient(
        base_url=base_url, limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000), timeout=60
    )
    loads = orjson.loads

    async def one(tokens: int, interval_ms: float, ctr: list[int]):
        parts = []
        sse = SSESplitter()
        async with client.stream("POST", "/v1/chat/completions", json=body(tokens, interval_ms)) as r:
            async for data in r.aiter_raw():
                for payload in sse.feed(data):
                    if payload == b"[DONE]":
                        continue  # drain to EOF: breaking early would close (not reuse) the connection
                    ctr[0] += 1
                    _content(loads(payload), parts)
        return "".join(parts)

    return one, client.aclose


async def make(name: str, base_url: str):
    import orjson

    if name == "a_litellm":
        return await make_litellm(base_url)
    if name == "b_openai":
        return await make_openai(base_url)
    if name == "c_httpx_lines_json":
        return await make_httpx_lines(base_url, json.loads)
    if name == "c_httpx_lines_orjson":
        return await make_httpx_lines(base_url, orjson.loads)
    if name == "d_aiohttp_lines_orjson":
        return await make_aiohttp(base_url, raw=False)
    if name == "e_aiohttp_raw_orjson":
        return await make_aiohttp(base_url, raw=True)
    if name == "e_httpx_raw_orjson":
        return await make_httpx_raw(base_url)
    raise KeyError(name)


# --------------------------------------------------------------------------- measurement


async def measure_bulk(name: str, base_url: str) -> float:
    """One BULK_TOKENS stream at interval 0: median CPU us/chunk of REPS runs after a warm-up."""
    if name == "a_litellm":
        import litellm  # noqa: F401  (import cost excluded)
    one, close = await make(name, base_url)
    want = expected_text(BULK_TOKENS)
    results = []
    try:
        for rep in range(REPS + 1):
            ctr = [0]
            c0 = time.process_time()
            text = await one(BULK_TOKENS, 0, ctr)
            cpu = time.process_time() - c0
            if text != want:
                raise AssertionError(f"{name}: wrong content ({len(text)} chars, want {len(want)})")
            if rep:  # rep 0 = warm-up
                results.append(1e6 * cpu / ctr[0])
    finally:
        await close()
    return statistics.median(results)


async def measure_steady(name: str, base_url: str) -> tuple[float, float]:
    """REAL_STREAMS concurrent streams, closed loop (each slot starts a new stream
    as soon as its previous one ends; initial starts staggered over one stream
    duration so completions are spread out).  After a ramp of one stream duration
    + 0.5 s, CPU and chunks are sampled over REPS windows of WINDOW_S.
    Returns (median us/chunk, client CPU % of one core, % of the ideal chunk rate).
    """
    if name == "a_litellm":
        import litellm  # noqa: F401
    one, close = await make(name, base_url)
    loop = asyncio.get_running_loop()
    duration = REAL_TOKENS * REAL_INTERVAL_MS / 1000.0
    want = expected_text(REAL_TOKENS)
    ctr = [0]
    stop = False
    bad: list[str] = []

    async def slot(i: int) -> None:
        await asyncio.sleep(i * duration / REAL_STREAMS)
        while not stop:
            text = await one(REAL_TOKENS, REAL_INTERVAL_MS, ctr)
            if text != want:
                bad.append(text)

    tasks = [loop.create_task(slot(i)) for i in range(REAL_STREAMS)]
    try:
        await asyncio.sleep(duration + 0.5)
        samples = [(time.process_time(), ctr[0], loop.time())]
        for _ in range(REPS):
            await asyncio.sleep(WINDOW_S)
            samples.append((time.process_time(), ctr[0], loop.time()))
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await close()
    if bad:
        raise AssertionError(f"{name}: {len(bad)} streams with wrong content")
    per = [1e6 * (c1 - c0) / max(n1 - n0, 1) for (c0, n0, _), (c1, n1, _) in itertools.pairwise(samples)]
    (c0, n0, w0), (c1, n1, w1) = samples[0], samples[-1]
    ideal_rate = REAL_STREAMS * 1000.0 / REAL_INTERVAL_MS  # chunks/s if nobody falls behind
    return statistics.median(per), 100.0 * (c1 - c0) / (w1 - w0), 100.0 * (n1 - n0) / (w1 - w0) / ideal_rate


def child(loop_name: str, base_url: str, only: list[str]) -> dict:
    """Runs in a child process: one event loop kind, all strategies."""

    async def main() -> dict:
        out: dict = {"bulk": {}, "realistic": {}}
        for name in only:
            out["bulk"][name] = await measure_bulk(name, base_url)
        if loop_name == "uvloop":
            for name in only:
                if name in REALISTIC:
                    out["realistic"][name] = await measure_steady(name, base_url)
        return out

    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def fmt_table(rows: list[list[str]], header: list[str]) -> tuple[str, str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    plain = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    plain.append("  ".join("-" * w for w in widths))
    plain += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    md = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(plain), "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=("asyncio", "uvloop"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--only", default=",".join(STRATEGIES), help="comma-separated strategy ids")
    ap.add_argument("--json", help="also write raw results to this file")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]

    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.url, only)), flush=True)
        return

    sim_mod = _load_simulator()
    t_start = time.time()
    results = {}
    with sim_mod.SimulatorProcess(tokens=20) as sim:
        for loop_name in ("asyncio", "uvloop"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", loop_name, "--url", sim.url, "--only", ",".join(only)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                raise SystemExit(f"child {loop_name} failed (rc={proc.returncode})")
            results[loop_name] = json.loads(lines[-1][7:])

    header = [
        "strategy",
        f"bulk asyncio ({BULK_TOKENS} tok)",
        f"bulk uvloop ({BULK_TOKENS} tok)",
        f"realistic uvloop ({REAL_STREAMS}x{REAL_TOKENS} @{REAL_INTERVAL_MS}ms)",
    ]
    rows = []
    for name in only:

        def cell(loop: str, kind: str, _name: str = name) -> str:
            v = results.get(loop, {}).get(kind, {}).get(_name)
            if v is None:
                return "-"
            if isinstance(v, list):  # (us/chunk, client CPU %, % of ideal chunk rate)
                return f"{v[0]:.1f} (cpu {v[1]:.0f}%, rate {v[2]:.0f}%)"
            return f"{v:.1f}"

        rows.append([STRATEGIES[name], cell("asyncio", "bulk"), cell("uvloop", "bulk"), cell("uvloop", "realistic")])
    plain, md = fmt_table(rows, header)
    print("client CPU per chunk, us (median of 3; lower is better)\n")
    print(plain)
    print("\nmarkdown:\n")
    print(md)
    print(f"\n(total {time.time() - t_start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
