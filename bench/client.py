"""The load generator's protocol clients (asyncio): the REST API over aiohttp, a task's
events over SSE (aiohttp) and WebSocket (websockets), the simulator's stats endpoints, and
the check that a followed stream lost and repeated nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import connect as ws_connect

API = "/mageagent/api/v1"


def sim_prompt(label: str, **directive: Any) -> str:
    return f"bench {label} [[sim {json.dumps(directive, separators=(',', ':'))}]]"


def parse_ts(value: str | None) -> float | None:
    """Unix time of an ISO-8601 timestamp as the API writes them (or None)."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (p in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def pcts(values: list[float], digits: int = 1) -> dict[str, float | int | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {"n": len(values), "p50": r(percentile(values, 50)), "p90": r(percentile(values, 90)),
            "p99": r(percentile(values, 99)), "max": r(max(values) if values else None)}


@dataclass
class Created:
    ok: bool
    status: int
    task_id: str = ""
    t_sent: float = 0.0
    t_done: float = 0.0
    error: str = ""

    @property
    def refused(self) -> bool:
        """The web answered 503 at capacity (its admission control): load shed by the
        server, counted with the client's own shedding rather than as an error."""
        return self.status == 503

    @property
    def failed(self) -> bool:
        return not self.ok and not self.refused

    @property
    def latency_ms(self) -> float:
        return (self.t_done - self.t_sent) * 1000.0


@dataclass
class Follow:
    """One subscriber of one task: every event with the time it arrived."""

    task_id: str
    transport: str  # sse | ws
    key: str = ""
    opened_at: float = 0.0
    ready_at: float | None = None  # first event received: subscribed, replay read
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    error: str = ""
    ended: bool = False  # the server ended the stream / closed the socket normally
    id_mismatch: int = 0  # SSE `id:` lines that differ from the event's seq
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    first_chunk: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, t: float, event: dict[str, Any]) -> None:
        if self.ready_at is None:
            self.ready_at = t
            self.ready.set()
        if event.get("type") == "chunk" and not self.first_chunk.is_set():
            self.first_chunk.set()
        self.events.append((t, event))

    def first(self, kind: str) -> tuple[float, dict[str, Any]] | None:
        for t, e in self.events:
            if e.get("type") == kind:
                return t, e
        return None


def verify(events: list[dict[str, Any]], content: str | None) -> dict[str, Any]:
    """The contract's guarantees for one followed stream: seq 1..N without gap or repeat,
    in order, exactly one `done` and it is last, and the chunks after the last reset make
    the task's result.content."""
    seqs = [e.get("seq") for e in events]
    counts = Counter(seqs)
    repeated = sum(c - 1 for c in counts.values() if c > 1)
    done_n = sum(1 for e in events if e.get("type") == "done")
    top = 0
    for e in events:
        if e.get("type") == "done":
            top = int(e.get("seq") or 0)
    top = top or max((s for s in seqs if isinstance(s, int)), default=0)
    lost = max(top - len([s for s in counts if isinstance(s, int) and 1 <= s <= top]), 0)
    parts: list[str] = []
    for e in events:
        if e.get("type") == "reset":
            parts.clear()
        elif e.get("type") == "chunk":
            parts.append(e.get("content") or "")
    content_ok = content is None or "".join(parts) == content
    in_order = seqs == sorted(s for s in seqs if isinstance(s, int))
    done_last = bool(events) and events[-1].get("type") == "done"
    return {"lost": lost, "repeated": repeated, "done": done_n, "done_last": done_last,
            "in_order": in_order, "content_ok": content_ok,
            "ok": lost == 0 and repeated == 0 and done_n == 1 and done_last and in_order and content_ok}


class Api:
    def __init__(self, web: str, sim: str, key: str) -> None:
        self.web, self.sim, self.key = web, sim, key
        self.headers = {"Authorization": f"Bearer {key}"}
        self.ws_base = web.replace("http://", "ws://", 1)
        self.session: aiohttp.ClientSession | None = None
        self.side: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4000, limit_per_host=0),
                                             timeout=timeout)
        # Statistics and housekeeping calls go through their own pool, so they never wait
        # behind the load.
        self.side = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16), timeout=timeout)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.session is not None and self.side is not None
        await self.session.close()
        await self.side.close()

    # --- REST --------------------------------------------------------------------------------------
    async def create(self, prompt: str, **fields: Any) -> Created:
        assert self.session is not None
        body = orjson.dumps({"prompt": prompt, **fields})
        headers = {**self.headers, "Content-Type": "application/json"}
        t_sent = time.time()
        try:
            async with self.session.post(f"{self.web}{API}/tasks", data=body, headers=headers) as resp:
                raw = await resp.read()
                t_done = time.time()
                if resp.status != 202:
                    return Created(False, resp.status, t_sent=t_sent, t_done=t_done,
                                   error=raw[:300].decode(errors="replace"))
                return Created(True, resp.status, orjson.loads(raw)["id"], t_sent, t_done)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Created(False, 0, t_sent=t_sent, t_done=time.time(), error=f"{type(exc).__name__}: {exc}")

    async def cancel(self, task_id: str) -> tuple[int, float]:
        assert self.session is not None
        t = time.time()
        try:
            async with self.session.post(f"{self.web}{API}/tasks/{task_id}/cancel", headers=self.headers) as resp:
                await resp.read()
                return resp.status, time.time() - t
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0, time.time() - t

    async def get_task(self, task_id: str) -> dict[str, Any] | None:
        assert self.side is not None
        async with self.side.get(f"{self.web}{API}/tasks/{task_id}", headers=self.headers) as resp:
            return orjson.loads(await resp.read()) if resp.status == 200 else None

    async def list_tasks(self, *, created_after: float, status: str | None = None,
                         limit: int = 100_000) -> list[dict[str, Any]]:
        """The caller's tasks created after a unix time (all pages, newest first)."""
        assert self.side is not None
        after = dt.datetime.fromtimestamp(created_after, dt.UTC).isoformat().replace("+00:00", "Z")
        params = {"created_after": after, "page_size": "200"}
        if status:
            params["status"] = status
        url: str | None = f"{self.web}{API}/tasks"
        out: list[dict[str, Any]] = []
        while url and len(out) < limit:
            async with self.side.get(url, headers=self.headers, params=params) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"GET /tasks answered {resp.status}: {(await resp.read())[:300]!r}")
                page = orjson.loads(await resp.read())
            out.extend(page["results"])
            url, params = page.get("next"), {}
        return out

    async def queue_metrics(self) -> dict[str, Any]:
        assert self.side is not None
        async with self.side.get(f"{self.web}{API}/queue/metrics", headers=self.headers) as resp:
            return orjson.loads(await resp.read())

    # --- the simulator's statistics ------------------------------------------------------------
    async def sim_records(self, since: float) -> list[dict[str, Any]]:
        assert self.side is not None
        async with self.side.get(f"{self.sim}/_sim/requests", params={"since": repr(since)}) as resp:
            return orjson.loads(await resp.read())

    async def sim_stats(self) -> dict[str, Any]:
        assert self.side is not None
        async with self.side.get(f"{self.sim}/_sim/stats") as resp:
            return orjson.loads(await resp.read())

    async def chat_stream(self, prompt: str, *, model: str = "gpt-4o-mini") -> tuple[bool, str, str]:
        """A streamed chat completion on /v1, read to its end: (ended with [DONE], the text,
        an error)."""
        assert self.session is not None
        body = orjson.dumps({"model": model, "stream": True, "stream_options": {"include_usage": True},
                             "messages": [{"role": "user", "content": prompt}]})
        headers = {**self.headers, "Content-Type": "application/json"}
        parts: list[str] = []
        try:
            async with self.session.post(f"{self.web}/v1/chat/completions", data=body, headers=headers) as resp:
                if resp.status != 200:
                    return False, "", f"HTTP {resp.status}: {(await resp.read())[:300]!r}"
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return True, "".join(parts), ""
                    chunk = orjson.loads(payload)
                    if "error" in chunk:
                        return False, "".join(parts), str(chunk["error"])[:300]
                    for choice in chunk.get("choices") or ():
                        parts.append(choice["delta"].get("content") or "")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return False, "".join(parts), f"{type(exc).__name__}: {exc}"
        return False, "".join(parts), "the stream ended without [DONE]"

    # --- following a task ------------------------------------------------------------------------
    async def follow(self, f: Follow, timeout: float) -> Follow:
        f.opened_at = time.time()
        try:
            async with asyncio.timeout(timeout):
                if f.transport == "sse":
                    await self._follow_sse(f)
                else:
                    await self._follow_ws(f)
        except TimeoutError:
            f.error = f.error or "timeout"
        except Exception as exc:
            f.error = f.error or f"{type(exc).__name__}: {exc}"[:300]
        f.ready.set()
        return f

    async def _follow_sse(self, f: Follow) -> None:
        assert self.session is not None
        url = f"{self.web}{API}/tasks/{f.task_id}/stream"
        async with self.session.get(url, headers=self.headers) as resp:
            if resp.status != 200:
                f.error = f"HTTP {resp.status}"
                return
            data: list[bytes] = []
            sse_id: int | None = None
            async for line in resp.content:
                t = time.time()
                line = line.rstrip(b"\r\n")
                if not line:
                    if data:
                        event = orjson.loads(b"\n".join(data))
                        if sse_id is not None and sse_id != event.get("seq"):
                            f.id_mismatch += 1
                        f.add(t, event)
                    data, sse_id = [], None
                elif line.startswith(b"data:"):
                    data.append(line[5:].lstrip())
                elif line.startswith(b"id:"):
                    sse_id = int(line[3:].strip())
            f.ended = True

    async def _follow_ws(self, f: Follow) -> None:
        url = f"{self.ws_base}{API}/tasks/{f.task_id}/ws"
        async with ws_connect(url, additional_headers=self.headers, open_timeout=60, ping_interval=None,
                              max_size=None, close_timeout=5) as ws:
            async for message in ws:
                f.add(time.time(), orjson.loads(message))
        f.ended = True
