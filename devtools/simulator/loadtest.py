"""Measure the simulator's own CPU cost per token (development tool).

    python -m devtools.simulator.loadtest --rate 250 --tokens 100 --interval-ms 40 --seconds 20

Starts the simulator as a subprocess (``--scheduler shared|sleep``), drives it
with a minimal raw-socket HTTP/1.1 keep-alive client (so the client is cheap),
and reports simulator CPU seconds (utime+stime from /proc) / tokens sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from .server import SimulatorProcess

_END = b"data: [DONE]\n\n\r\n0\r\n\r\n"


def _proc_times(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.nbytes = 0
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        tail = (self.tail + data)[-len(_END) :]
        self.tail = tail
        if tail == _END and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("lost"))


async def _drive(host: str, port: int, rate: float, seconds: float, body: bytes) -> dict:
    loop = asyncio.get_running_loop()
    pool: list[_Conn] = []
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    done = 0
    errors = 0
    active = 0
    peak = 0

    async def one() -> None:
        nonlocal done, errors, active, peak
        active += 1
        peak = max(peak, active)
        conn = None
        while pool:
            c = pool.pop()
            if not c.lost:
                conn = c
                break
        if conn is None:
            _, conn = await loop.create_connection(_Conn, host, port)
        conn.tail = b""
        conn.waiter = loop.create_future()
        conn.transport.write(req)  # type: ignore[union-attr]
        try:
            await conn.waiter
            done += 1
            pool.append(conn)
        except ConnectionError:
            errors += 1
        finally:
            active -= 1

    tasks = set()
    t0 = loop.time()
    i = 0
    while True:
        now = loop.time()
        if now - t0 >= seconds:
            break
        target = int((now - t0) * rate)
        while i < target:
            t = loop.create_task(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(0.004)
    if tasks:
        await asyncio.wait(tasks)
    for c in pool:
        c.transport.close()  # type: ignore[union-attr]
    return {"started": i, "done": done, "errors": errors, "peak_concurrency": peak}


def run(scheduler: str, rate: float, tokens: int, interval_ms: float, seconds: float) -> dict:
    import uvloop

    body = (
        b'{"model":"sim","stream":true,"stream_options":{"include_usage":true},'
        b'"messages":[{"role":"user","content":"hello [[sim {\\"tokens\\": %d, \\"interval_ms\\": %g}]]"}]}'
        % (tokens, interval_ms)
    )
    with SimulatorProcess(scheduler=scheduler) as sim:
        host, port = sim.url.rsplit("//", 1)[1].rsplit(":", 1)
        time.sleep(0.3)
        u0, s0 = _proc_times(sim.pid)
        w0 = time.time()
        res = uvloop.run(_drive(host, int(port), rate, seconds, body))
        wall = time.time() - w0
        u1, s1 = _proc_times(sim.pid)
        cpu = (u1 - u0) + (s1 - s0)
    n_tok = res["done"] * tokens
    res.update(
        scheduler=scheduler,
        wall_s=round(wall, 2),
        sim_cpu_s=round(cpu, 2),
        sim_user_s=round(u1 - u0, 2),
        sim_sys_s=round(s1 - s0, 2),
        sim_cpu_pct=round(100 * cpu / wall, 1),
        tokens=n_tok,
        us_per_token=round(1e6 * cpu / max(n_tok, 1), 2),
    )
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=250)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--interval-ms", type=float, default=40)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--scheduler", default="shared,sleep")
    a = p.parse_args()
    for sched in a.scheduler.split(","):
        print(run(sched, a.rate, a.tokens, a.interval_ms, a.seconds), flush=True)


if __name__ == "__main__":
    main()
