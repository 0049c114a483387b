"""OpenAI-compatible LLM *simulator* -- a development / test / benchmark tool.

NOT a production component and NOT a model: it fakes the OpenAI Chat
Completions protocol (streaming and non-streaming, tool calls, usage, errors)
with deterministic output and controllable timing so that MageAgent's workers
can be tested and benchmarked without a real provider.  It must stay
standalone: it imports only the stdlib, aiohttp and orjson (no Django), so it
starts fast and can run as a separate process::

    python -m devtools.simulator --host 127.0.0.1 --port 8900
    python devtools/simulator/server.py --port 0     # same, without importing
                                                      # the mageagent package

It prints ``simulator listening on http://HOST:PORT`` (flushed) once serving.
(``-m`` first imports the ``mageagent`` package ``__init__``, which currently
pulls in Celery and Django modules -- ~0.4 s slower start; the script form and
``SimulatorProcess()`` (default) avoid that.)  In-process: ``start_simulator``
/ ``SimulatorThread``; subprocess: ``SimulatorProcess`` (port 0 supported).

Endpoints
---------
``POST /v1/chat/completions`` (alias ``/chat/completions``),
``GET /v1/models`` (alias ``/models``), ``GET /_sim/health``,
``POST /v1/messages`` (Anthropic Messages), ``POST /v1beta/models/{model}:streamGenerateContent``
(Gemini, ``?alt=sse``; ``:generateContent`` too), ``POST /v2/chat`` (Cohere chat v2) -- each
in its own wire format (events, tool calls, usage, errors), read into the same directives;
``stream_error: true`` with ``fail_after_tokens`` sends the family's in-stream error event
(Anthropic ``overloaded_error``, Gemini ``UNAVAILABLE``) before the connection closes. Their
records carry ``family`` and ``usage`` (what the answer reported).
``GET /_sim/requests/{key}`` (list of records for a key, oldest first),
``GET /_sim/requests?since=<unix float>`` (records received since),
``DELETE /_sim/requests`` (clear), ``GET /_sim/stats`` (counters).

Directive
---------
Per-request behaviour is set by ``[[sim {JSON}]]`` anywhere in the messages
(last user message searched first, then all messages, newest first).  Fields:
``tokens``, ``ttft_ms``, ``interval_ms``, ``duration_ms`` (spread the tokens
over this time after TTFT), ``token_text`` (pattern with ``{i}``), ``text``
(exact content, split on whitespace keeping the spaces), ``key`` (stats
correlation key, default = the request id), ``error`` (HTTP status or
``"context_length_exceeded"``), ``error_message``, ``error_times`` (only the
first N requests carrying ``key`` fail; also applies to ``fail_after_tokens``),
``fail_after_tokens`` (stream N tokens then drop the connection),
``fail_models`` (list of model names: ``error`` / ``fail_after_tokens`` apply
only to requests for these models; ``error_times`` still counts every request
carrying ``key``), and
``echo`` (true: the answer is the request body as one JSON object, minus
``stream`` / ``stream_options``, so tests see what reached the provider),
``tool_calls`` (list of ``{"name", "arguments"}``; used when the request has
``tools`` and no ``role: tool`` message exists yet; once tool results exist the
answer contains ``[tool:<name> <first 200 chars>]`` for each of them).
Server-wide defaults come from CLI flags / ``MAGEAGENT_SIM_*`` env vars.

Records (wall clock ``time.time()``): ``received_at``, ``first_token_at``,
``last_token_at``, ``finished_at`` (completed normally), ``closed_at`` (client
went away first -- detected immediately through aiohttp's
``handler_cancellation=True``), ``status`` (``streaming`` while running, then
``completed`` / ``client_closed`` / ``error`` / ``aborted``), ``tokens_sent``,
``model``, ``request_count`` (ordinal of this request among those sharing the
key, i.e. retries).  At most ``--max-records`` (200k) records are kept.

Schedulers (their CPU per token: ``python -m devtools.simulator.loadtest``;
figures in BENCHMARKS.md, "Figures behind the design"):

* ``--scheduler shared`` (default): one timer wheel (1 ms slots) for all
  streams; due tokens are written synchronously straight to the transport
  (several due tokens of a stream are coalesced into one HTTP chunk/write);
  the handler task only wakes at start and end, so the simulator stays a
  small share of a benchmark's CPU. A wheel rather than a heap of
  (due, seq, stream): cheaper per token.
* ``--scheduler sleep``: naive per-stream ``asyncio.sleep`` + ``await
  resp.write`` per token, the reference the wheel is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

DEFAULT_MODELS = ("sim", "sim-large", "gpt-4o-mini", "gpt-4o")
JSON_CT = "application/json"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
DIRECTIVE_START = "[[sim "
_DECODER = json.JSONDecoder()
_TEXT_SPLIT = re.compile(r"\s*\S+\s*")
_DONE = b"data: [DONE]\n\n"
# Transport write-buffer level above which a stream pauses (slow reader).
_HIGH_WATER = 256 * 1024
# Max events per write for streams with interval 0 (keeps the loop fair).
_MAX_BATCH = 128


# --------------------------------------------------------------------------- config


class SimConfig:
    __slots__ = (
        "interval_ms",
        "max_records",
        "models",
        "require_key",
        "scheduler",
        "token_text",
        "tokens",
        "ttft_ms",
    )

    def __init__(
        self,
        ttft_ms: float = 0.0,
        tokens: int = 20,
        interval_ms: float = 0.0,
        token_text: str = "tok{i} ",
        require_key: str | None = None,
        max_records: int = 200_000,
        scheduler: str = "shared",
        models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
    ) -> None:
        if scheduler not in ("shared", "sleep"):
            raise ValueError("scheduler must be 'shared' or 'sleep'")
        self.ttft_ms = float(ttft_ms)
        self.tokens = int(tokens)
        self.interval_ms = float(interval_ms)
        self.token_text = token_text
        self.require_key = require_key or None
        self.max_records = int(max_records)
        self.scheduler = scheduler
        self.models = tuple(models)


# --------------------------------------------------------------------------- helpers

_token_cache: dict[str, list[bytes]] = {}


def _gen_middles(pattern: str, n: int) -> list[bytes]:
    """Encoded ``{"content":"<token i>"}`` deltas for generated tokens (cached)."""
    cache = _token_cache.get(pattern)
    if cache is None:
        cache = _token_cache[pattern] = []
    if len(cache) < n:
        for i in range(len(cache), n):
            cache.append(b'{"content":' + orjson.dumps(pattern.format(i=i)) + b"}")
    return cache if len(cache) == n else cache[:n]


def _gen_text(pattern: str, n: int) -> str:
    return "".join(pattern.format(i=i) for i in range(n))


def split_text(text: str) -> list[str]:
    """Split into whitespace-delimited tokens, keeping the spaces (join == text)."""
    parts = _TEXT_SPLIT.findall(text)
    if "".join(parts) != text:  # only whitespace / edge cases
        return [text] if text else []
    return parts


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    out.append(t)
            elif isinstance(part, str):
                out.append(part)
        return " ".join(out)
    return ""


def parse_directive(text: str) -> dict | None:
    """Return the JSON object of the first ``[[sim {...}]]`` in text, or None."""
    pos = text.find(DIRECTIVE_START)
    while pos != -1:
        start = pos + len(DIRECTIVE_START)
        try:
            obj, end = _DECODER.raw_decode(text, start)
        except ValueError:
            obj, end = None, start
        if isinstance(obj, dict) and text.startswith("]]", end):
            return obj
        pos = text.find(DIRECTIVE_START, start)
    return None


def find_directive(messages: list) -> dict:
    texts = [(m.get("role"), _content_text(m.get("content"))) for m in messages if isinstance(m, dict)]
    for role, text in reversed(texts):
        if role == "user":
            d = parse_directive(text)
            if d is not None:
                return d
            break
    for _role, text in reversed(texts):
        d = parse_directive(text)
        if d is not None:
            return d
    return {}


def _count_words(messages: list) -> int:
    n = 0
    for m in messages:
        if isinstance(m, dict):
            n += len(_content_text(m.get("content")).split())
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {} if isinstance(tc, dict) else {}
                n += len(str(fn.get("arguments", "")).split())
    return max(n, 1)


_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (simulated).", "invalid_request_error", None),
    401: ("Incorrect API key provided (simulated).", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource (simulated).", "invalid_request_error", None),
    404: ("The model does not exist (simulated).", "invalid_request_error", "model_not_found"),
    408: ("Request timed out (simulated).", "timeout", None),
    429: ("Rate limit reached for requests (simulated).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that! (simulated)", "server_error", None),
    502: ("Bad gateway (simulated).", "server_error", None),
    503: ("The engine is currently overloaded, please try again later. (simulated)", "server_error", None),
    504: ("Gateway timeout (simulated).", "server_error", None),
}


def error_response(status: int | str, message: str | None = None) -> web.Response:
    """An OpenAI-shaped error response."""
    headers = {}
    if status == "context_length_exceeded":
        code_status = 400
        body: dict[str, Any] = {
            "message": message
            or (
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 131072 tokens. Please reduce the length of the messages."
            ),
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    else:
        try:
            code_status = int(status)
        except (TypeError, ValueError):
            code_status = 500
        default_msg, etype, code = _ERRORS.get(
            code_status,
            ("Simulated error.", "server_error" if code_status >= 500 else "invalid_request_error", None),
        )
        body = {"message": message or default_msg, "type": etype, "param": None, "code": code}
        if code_status == 429:
            headers["Retry-After"] = "0"
            headers["retry-after-ms"] = "0"
    return web.Response(
        status=code_status,
        body=orjson.dumps({"error": body}),
        content_type=JSON_CT,
        headers=headers,
    )


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type=JSON_CT)


# --------------------------------------------------------------------------- stats


class Stats:
    """Bounded in-memory store of per-request records (plain dicts)."""

    def __init__(self, max_records: int = 200_000) -> None:
        self.max_records = max_records
        self.records: deque[dict] = deque()
        self.by_key: dict[str, list[dict]] = {}
        self.key_counts: dict[str, int] = {}
        self.total = 0
        self.tokens_total = 0
        self.active = 0

    def new(self, key: str, req_id: str, model: Any, stream: bool, now: float) -> dict:
        count = self.key_counts.get(key, 0) + 1
        self.key_counts[key] = count
        rec = {
            "key": key,
            "id": req_id,
            "model": model,
            "stream": stream,
            "request_count": count,
            "received_at": now,
            "first_token_at": None,
            "last_token_at": None,
            "finished_at": None,
            "closed_at": None,
            "aborted_at": None,
            "status": "streaming",
            "tokens_sent": 0,
            "tokens_planned": 0,
            "finish_reason": None,
            "http_status": 200,
            "prompt_tokens": 0,
        }
        self.records.append(rec)
        lst = self.by_key.get(key)
        if lst is None:
            self.by_key[key] = [rec]
        else:
            lst.append(rec)
        self.total += 1
        if len(self.records) > self.max_records:
            old = self.records.popleft()
            okey = old["key"]
            olst = self.by_key.get(okey)
            if olst:
                if olst[0] is old:
                    olst.pop(0)
                else:  # pragma: no cover - defensive
                    olst.remove(old)
                if not olst:
                    del self.by_key[okey]
                    self.key_counts.pop(okey, None)
        return rec

    def since(self, t: float) -> list[dict]:
        out = []
        for rec in reversed(self.records):
            if rec["received_at"] < t:
                break
            out.append(rec)
        out.reverse()
        return out

    def clear(self) -> None:
        self.records.clear()
        self.by_key.clear()
        self.key_counts.clear()

    def summary(self) -> dict:
        by_status: dict[str, int] = {}
        for rec in self.records:
            by_status[rec["status"]] = by_status.get(rec["status"], 0) + 1
        return {
            "requests_total": self.total,
            "tokens_sent_total": self.tokens_total,
            "active": self.active,
            "records": len(self.records),
            "by_status": by_status,
        }


# --------------------------------------------------------------------------- streams


class _Stream:
    """One streaming response driven by the shared scheduler."""

    __slots__ = (
        "dead",
        "done",
        "error_frame",
        "fail_after",
        "fixed_len",
        "head",
        "idx",
        "interval",
        "middles",
        "n",
        "prefix",
        "rec",
        "start",
        "stats",
        "suffix",
        "transport",
    )

    def __init__(self, transport, head, prefix, suffix, middles, start, plan, done, rec, stats):
        self.transport = transport
        self.head = head
        self.prefix = prefix
        self.suffix = suffix
        self.fixed_len = len(prefix) + len(suffix)
        self.middles = middles
        self.n = len(middles)
        self.idx = 0
        self.start = start
        self.interval = plan.interval
        self.fail_after = plan.fail_after
        self.done = done
        self.rec = rec
        self.stats = stats
        self.dead = False
        self.error_frame = b""


class Scheduler:
    """One timer wheel (1 ms slots) that writes the due tokens of all streams.

    Tokens are written synchronously to the transport from a loop callback,
    so handler tasks only wake up at the start and at the end of their
    stream.  A slot's streams are written when the slot ends (tokens are at
    most ~1 ms late); several tokens that are already due are coalesced into
    one write.  Streams with interval 0 go through a call_soon ready list,
    _MAX_BATCH events per turn.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, list[_Stream]] = {}
        self.slot_heap: list[int] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_slot = 0
        self.ready: list[_Stream] = []

    def add(self, st: _Stream) -> None:
        if st.start <= self.loop.time():
            self._push_ready(st)
        else:
            self._push(st.start, st)

    def _push(self, due: float, st: _Stream) -> None:
        s = int(due * 1000.0)
        lst = self.slots.get(s)
        if lst is not None:
            lst.append(st)
            return
        self.slots[s] = [st]
        heapq.heappush(self.slot_heap, s)
        if self.timer is None or s < self.timer_slot:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_slot = s
            self.timer = self.loop.call_at((s + 1) / 1000.0, self._tick)

    def _push_ready(self, st: _Stream) -> None:
        if not self.ready:
            self.loop.call_soon(self._run_ready)
        self.ready.append(st)

    def _run_ready(self) -> None:
        ready, self.ready = self.ready, []
        now = self.loop.time()
        wall = time.time()
        for st in ready:
            if not st.dead:
                self._run(st, now, wall)

    def _tick(self) -> None:
        self.timer = None
        now = self.loop.time()
        limit = now * 1000.0 - 0.999
        heap = self.slot_heap
        slots = self.slots
        if heap and heap[0] <= limit:
            wall = time.time()
            run = self._run
            while heap and heap[0] <= limit:
                for st in slots.pop(heapq.heappop(heap)):
                    if not st.dead:
                        run(st, now, wall)
        if heap and self.timer is None:
            s = self.timer_slot = heap[0]
            self.timer = self.loop.call_at((s + 1) / 1000.0, self._tick)

    def _run(self, st: _Stream, now: float, wall: float) -> None:
        tr = st.transport
        if tr is None or tr.is_closing():
            st.dead = True  # connection_lost will cancel the handler
            return
        if tr.get_write_buffer_size() > _HIGH_WATER:
            self._push(now + 0.002, st)  # slow reader: poll again later
            return
        idx = st.idx
        n = st.n
        interval = st.interval
        if interval > 0.0:
            end = int((now - st.start) / interval) + 1
            if end <= idx:
                end = idx + 1
            if end > n:
                end = n
        else:
            end = idx + _MAX_BATCH
            if end > n:
                end = n
        fail_after = st.fail_after
        if fail_after is not None and end > fail_after:
            end = fail_after
        prefix = st.prefix
        suffix = st.suffix
        middles = st.middles
        if end - idx == 1 and idx:
            mid = middles[idx]
            tr.write(b"%x\r\n%b%b%b\r\n" % (st.fixed_len + len(mid), prefix, mid, suffix))
        else:
            parts = [st.head] if idx == 0 else []
            for i in range(idx, end):
                parts.append(prefix)
                parts.append(middles[i])
                parts.append(suffix)
            payload = b"".join(parts)
            if payload:
                tr.write(b"%x\r\n%b\r\n" % (len(payload), payload))
        rec = st.rec
        if idx == 0:
            rec["first_token_at"] = wall
        rec["last_token_at"] = wall
        rec["tokens_sent"] = end
        st.stats.tokens_total += end - idx
        st.idx = end
        if fail_after is not None and end >= fail_after:
            st.dead = True
            rec["status"] = "aborted"
            rec["aborted_at"] = wall
            if st.error_frame:  # the provider's own in-stream error event, then the end
                tr.write(b"%x\r\n%b\r\n" % (len(st.error_frame), st.error_frame))
            tr.close()  # flush what was sent, then FIN without the terminating chunk
            if not st.done.done():
                st.done.set_result("aborted")
            return
        if end >= n:
            st.dead = True
            if not st.done.done():
                st.done.set_result("done")
            return
        if interval > 0.0:
            self._push(st.start + end * interval, st)
        else:
            self._push_ready(st)


# --------------------------------------------------------------------------- app


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.stats = Stats(self.config.max_records)
        self.scheduler: Scheduler | None = None
        self._ids = itertools.count(1)
        self._id_prefix = "chatcmpl-sim%x" % (os.getpid() ^ int(time.time() * 1000) & 0xFFFFFF)

    # ---------------------------------------------------------------- app factory

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        for prefix in ("/v1", ""):
            r.add_post(prefix + "/chat/completions", self.chat_completions)
            r.add_get(prefix + "/models", self.models)
        r.add_post("/v1/messages", self.anthropic_messages)
        r.add_post("/v1beta/models/{call}", self.gemini_generate)
        r.add_post("/v2/chat", self.cohere_chat)
        r.add_get("/_sim/health", self.health)
        r.add_get("/_sim/stats", self.stats_summary)
        r.add_get("/_sim/requests", self.requests_since)
        r.add_delete("/_sim/requests", self.requests_clear)
        r.add_get("/_sim/requests/{key}", self.requests_by_key)
        return app

    # ---------------------------------------------------------------- small endpoints

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        created = 1700000000
        return _json(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "mageagent-simulator"}
                    for m in self.config.models
                ],
            }
        )

    async def stats_summary(self, request: web.Request) -> web.Response:
        return _json(self.stats.summary())

    async def requests_by_key(self, request: web.Request) -> web.Response:
        return _json(self.stats.by_key.get(request.match_info["key"], []))

    async def requests_since(self, request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            return error_response(400, "since must be a float")
        return _json(self.stats.since(since))

    async def requests_clear(self, request: web.Request) -> web.Response:
        self.stats.clear()
        return _json({"cleared": True})

    def _check_auth(self, request: web.Request) -> web.Response | None:
        key = self.config.require_key
        if key is None:
            return None
        if request.headers.get("Authorization", "") != "Bearer " + key:
            return error_response(401)
        return None

    # ---------------------------------------------------------------- chat completions

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        received = time.time()
        if (denied := self._check_auth(request)) is not None:
            return denied
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return error_response(400, "We could not parse the JSON body of your request.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error_response(400, "'messages' must be a non-empty array")

        d = find_directive(messages)
        req_id = f"{self._id_prefix}{next(self._ids)}"
        model = body.get("model") or "sim"
        stats = self.stats
        rec = stats.new(str(d.get("key") or req_id), req_id, model, bool(body.get("stream")), received)
        try:
            plan = _Plan(self.config, body, messages, d, req_id, model, rec["request_count"])
        except (TypeError, ValueError) as exc:
            rec.update(status="error", http_status=400, finished_at=time.time())
            return error_response(400, f"bad [[sim]] directive: {exc}")
        rec["prompt_tokens"] = plan.prompt_tokens
        rec["finish_reason"] = plan.finish_reason

        stats.active += 1
        try:
            if plan.error is not None:
                if plan.ttft > 0:
                    await asyncio.sleep(plan.ttft)
                resp = error_response(plan.error, d.get("error_message"))
                rec.update(status="error", http_status=resp.status, finished_at=time.time())
                return resp
            if plan.stream:
                return await self._stream(request, rec, plan)
            return await self._non_stream(request, rec, plan)
        except asyncio.CancelledError:
            if rec["status"] == "streaming":
                rec["closed_at"] = time.time()
                rec["status"] = "client_closed"
            raise
        finally:
            stats.active -= 1

    async def _non_stream(self, request: web.Request, rec: dict, plan: _Plan) -> web.StreamResponse:
        n = plan.n_frames()
        delay = plan.ttft + max(n - 1, 0) * plan.interval
        if delay > 0:
            await asyncio.sleep(delay)
        if plan.fail_after is not None:
            await self._abort(request, rec)
        calls = plan.calls
        if calls is not None:
            message = {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None}
            completion_tokens = n
        else:
            if plan.pieces_text is not None:
                text = "".join(plan.pieces_text)
            else:
                text = _gen_text(plan.pattern, plan.n_content)
            message = {"role": "assistant", "content": text, "refusal": None}
            completion_tokens = plan.n_content
        p = plan.prompt_tokens
        body = {
            "id": plan.req_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}],
            "usage": {
                "prompt_tokens": p,
                "completion_tokens": completion_tokens,
                "total_tokens": p + completion_tokens,
            },
            "system_fingerprint": None,
        }
        now = time.time()
        rec.update(
            first_token_at=now,
            last_token_at=now,
            finished_at=now,
            status="completed",
            tokens_sent=completion_tokens,
            tokens_planned=completion_tokens,
        )
        self.stats.tokens_total += completion_tokens
        return _json(body)

    async def _stream(self, request: web.Request, rec: dict, plan: _Plan) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)

        model_json = orjson.dumps(plan.model)
        head_obj = (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%b,'
            b'"system_fingerprint":null,"choices":[{"index":0,"delta":'
            % (plan.req_id.encode(), plan.created, model_json)
        )
        usage_null = b',"usage":null' if plan.include_usage else b""
        suffix = b',"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"

        if plan.calls is not None:
            middles = []
            for j, c in enumerate(plan.calls):
                first = {
                    "index": j,
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": ""},
                }
                delta: dict = {"tool_calls": [first]}
                if j == 0:
                    delta = {"role": "assistant", "content": None, "tool_calls": [first], "refusal": None}
                middles.append(orjson.dumps(delta))
                for piece in _arg_pieces(c["function"]["arguments"]):
                    middles.append(orjson.dumps({"tool_calls": [{"index": j, "function": {"arguments": piece}}]}))
            head = b""
        else:
            if plan.pieces_text is None:
                middles = _gen_middles(plan.pattern, plan.n_content)
            else:
                middles = [b'{"content":' + orjson.dumps(p) + b"}" for p in plan.pieces_text]
            head = head_obj + b'{"role":"assistant","content":"","refusal":null}' + suffix
        n = len(middles)
        rec["tokens_planned"] = n

        tail = [head_obj, b'{},"logprobs":null,"finish_reason":"%s"}]' % plan.finish_reason.encode(), usage_null]
        tail.append(b"}\n\n")
        if plan.include_usage:
            usage = {
                "prompt_tokens": plan.prompt_tokens,
                "completion_tokens": n,
                "total_tokens": plan.prompt_tokens + n,
            }
            tail.append(
                b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%b,'
                b'"system_fingerprint":null,"choices":[],"usage":%b}\n\n'
                % (plan.req_id.encode(), plan.created, model_json, orjson.dumps(usage))
            )
        tail.append(_DONE)
        tail_bytes = b"".join(tail)
        start = t0 + plan.ttft

        if n == 0:
            if plan.ttft > 0:
                await asyncio.sleep(plan.ttft)
            if plan.fail_after is not None:
                await self._abort(request, rec)
            rec["first_token_at"] = rec["last_token_at"] = time.time()
            tail_bytes = head + tail_bytes
        elif self.config.scheduler == "shared":
            if self.scheduler is None or self.scheduler.loop is not loop:
                self.scheduler = Scheduler(loop)
            done = loop.create_future()
            st = _Stream(request.transport, head, head_obj, suffix, middles, start, plan, done, rec, self.stats)
            self.scheduler.add(st)
            try:
                outcome = await done
            finally:
                st.dead = True
            if outcome == "aborted":
                await asyncio.sleep(3600)  # cancelled by connection_lost
        else:
            await self._stream_sleep(resp, rec, head, head_obj, suffix, middles, start, plan, request, loop)
        await resp.write_eof(tail_bytes)
        rec["finished_at"] = time.time()
        rec["status"] = "completed"
        return resp

    # ---------------------------------------------------------------- other families

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._family(request, ANTHROPIC)

    async def gemini_generate(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        if method not in ("streamGenerateContent", "generateContent"):
            return GEMINI.error(404, f"unknown method {method!r}")
        return await self._family(request, GEMINI, model=model, stream=method == "streamGenerateContent")

    async def cohere_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._family(request, COHERE)

    async def _family(self, request: web.Request, family: Family, *, model: str | None = None,
                      stream: bool | None = None) -> web.StreamResponse:
        received = time.time()
        try:
            raw = orjson.loads(await request.read())
            if not isinstance(raw, dict):
                raise ValueError
        except ValueError:
            return family.error(400, "could not parse the JSON body")
        unknown = sorted(set(raw) - family.fields) if family.fields else []
        if unknown:  # as Anthropic's API does: "json_mode: Extra inputs are not permitted"
            return family.error(400, f"{unknown[0]}: Extra inputs are not permitted")
        refused = family.refuse(raw)
        if refused:
            return family.error(400, refused)
        body = family.normalize(raw)
        body["stream"] = bool(raw.get("stream")) if stream is None else stream
        messages = body["messages"]
        if not messages:
            return family.error(400, "messages must not be empty")
        d = find_directive(messages)
        req_id = f"{self._id_prefix}{next(self._ids)}"
        model = model or raw.get("model") or "sim"
        stats = self.stats
        rec = stats.new(str(d.get("key") or req_id), req_id, model, body["stream"], received)
        rec["family"] = family.name
        # How the request reached it: the query (Gemini's alt=sse) and the key, in the
        # family's own header.
        rec["query"] = request.query_string
        rec["api_key"] = family.api_key(request)
        try:
            plan = _Plan(self.config, body, messages, d, req_id, model, rec["request_count"])
        except (TypeError, ValueError) as exc:
            rec.update(status="error", http_status=400, finished_at=time.time())
            return family.error(400, f"bad [[sim]] directive: {exc}")
        if d.get("echo") and plan.calls is None:
            # What reached the provider, in its own form (minus `stream`).
            plan.pieces_text = [orjson.dumps({k: v for k, v in raw.items() if k != "stream"}).decode()]
            plan.n_content = 1
        texts = plan.pieces_text if plan.pieces_text is not None else [
            plan.pattern.format(i=i) for i in range(plan.n_content)]
        if body.get("forced_tool") and plan.calls is None:
            # A forced tool (Anthropic's JSON mode) is called: its input is what the answer
            # would have been, as an object.
            text = "".join(texts)
            args = text if text.startswith("{") else json.dumps({"text": text})
            plan.calls = [_norm_call(req_id, 0, {"name": body["forced_tool"], "arguments": args})]
            plan.finish_reason = "tool_calls"
        completion = plan.n_frames() if plan.calls is not None else plan.n_content
        rec.update(prompt_tokens=plan.prompt_tokens, finish_reason=plan.finish_reason,
                   usage={"prompt_tokens": plan.prompt_tokens, "completion_tokens": completion})
        stats.active += 1
        try:
            if plan.error is not None:
                if plan.ttft > 0:
                    await asyncio.sleep(plan.ttft)
                resp = family.error(plan.error, d.get("error_message"))
                rec.update(status="error", http_status=resp.status, finished_at=time.time())
                return resp
            if body["stream"]:
                return await self._family_stream(request, rec, plan, family, texts, completion,
                                                 bool(d.get("stream_error")))
            delay = plan.ttft + max(len(texts) - 1, 0) * plan.interval
            if delay > 0:
                await asyncio.sleep(delay)
            if plan.fail_after is not None:
                await self._abort(request, rec)
            now = time.time()
            rec.update(first_token_at=now, last_token_at=now, finished_at=now, status="completed",
                       tokens_sent=completion, tokens_planned=completion)
            return _json(family.complete(plan, "".join(texts), completion))
        except asyncio.CancelledError:
            if rec["status"] == "streaming":
                rec["closed_at"] = time.time()
                rec["status"] = "client_closed"
            raise
        finally:
            stats.active -= 1

    async def _family_stream(self, request: web.Request, rec: dict, plan: _Plan, family: Family, texts: list[str],
                             completion: int, stream_error: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        resp = web.StreamResponse(headers={**SSE_HEADERS, "Content-Type": family.content_type})
        await resp.prepare(request)
        head, middles, tail = family.frames(plan, texts, completion)
        rec["tokens_planned"] = len(middles)
        if not middles:
            if plan.ttft > 0:
                await asyncio.sleep(plan.ttft)
            rec["first_token_at"] = rec["last_token_at"] = time.time()
            tail = head + tail
        else:
            if self.scheduler is None or self.scheduler.loop is not loop:
                self.scheduler = Scheduler(loop)
            done = loop.create_future()
            st = _Stream(request.transport, head, b"", b"", middles, t0 + plan.ttft, plan, done, rec, self.stats)
            if stream_error:
                st.error_frame = family.stream_error()
            self.scheduler.add(st)
            try:
                outcome = await done
            finally:
                st.dead = True
            if outcome == "aborted":
                await asyncio.sleep(3600)  # cancelled by connection_lost
        await resp.write_eof(tail)
        rec["finished_at"] = time.time()
        rec["status"] = "completed"
        return resp

    async def _abort(self, request: web.Request, rec: dict) -> None:
        """Drop the connection (sent data is flushed first); never returns normally."""
        rec["status"] = "aborted"
        rec["aborted_at"] = time.time()
        if request.transport is not None:
            request.transport.close()
        await asyncio.sleep(3600)  # cancelled by connection_lost
        raise ConnectionResetError("aborted")  # pragma: no cover

    async def _stream_sleep(self, resp, rec, head, prefix, suffix, middles, start, plan, request, loop) -> None:
        """Naive variant (per-token sleep + resp.write), kept for measurement."""
        interval = plan.interval
        n = len(middles)
        limit = n if plan.fail_after is None else min(n, plan.fail_after)
        stats = self.stats
        idx = 0
        while idx < limit:
            delay = start + idx * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if interval <= 0:
                end = idx + 1
            else:
                end = min(limit, max(idx + 1, int((loop.time() - start) / interval) + 1))
            parts = [head] if idx == 0 else []
            for i in range(idx, end):
                parts.append(prefix + middles[i] + suffix)
            await resp.write(b"".join(parts))
            wall = time.time()
            if idx == 0:
                rec["first_token_at"] = wall
            rec["last_token_at"] = wall
            rec["tokens_sent"] = end
            stats.tokens_total += end - idx
            idx = end
        if plan.fail_after is not None:
            await self._abort(request, rec)


class _Plan:
    """What to answer to one chat-completions request (server defaults + directive)."""

    __slots__ = (
        "calls",
        "created",
        "error",
        "fail_after",
        "finish_reason",
        "include_usage",
        "interval",
        "model",
        "n_content",
        "pattern",
        "pieces_text",
        "prompt_tokens",
        "req_id",
        "stream",
        "ttft",
    )

    def __init__(self, cfg: SimConfig, body: dict, messages: list, d: dict, req_id: str, model: Any, ordinal: int):
        self.req_id = req_id
        self.model = model
        self.created = int(time.time())
        self.stream = bool(body.get("stream"))
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.prompt_tokens = _count_words(messages)
        self.ttft = float(d.get("ttft_ms", cfg.ttft_ms)) / 1000.0
        n_tokens = int(d.get("tokens", cfg.tokens))
        if d.get("duration_ms") is not None:
            self.interval = float(d["duration_ms"]) / 1000.0 / max(n_tokens - 1, 1)
        else:
            self.interval = float(d.get("interval_ms", cfg.interval_ms)) / 1000.0
        error_times = d.get("error_times")
        failing = error_times is None or ordinal <= int(error_times)
        fail_models = d.get("fail_models")
        if fail_models is not None and str(model) not in fail_models:
            failing = False  # only requests for the listed models fail
        self.error = d.get("error") if failing else None
        fail_after = d.get("fail_after_tokens")
        self.fail_after = int(fail_after) if fail_after is not None and failing else None
        self.pattern = str(d.get("token_text", cfg.token_text))

        has_tool_results = any(isinstance(m, dict) and m.get("role") in ("tool", "function") for m in messages)
        tool_calls = d.get("tool_calls")
        self.calls: list[dict] | None = None
        self.pieces_text: list[str] | None = None  # None = generated tokens (cached encodings)
        self.n_content = 0
        if tool_calls and body.get("tools") and body.get("tool_choice") != "none" and not has_tool_results:
            self.calls = [_norm_call(req_id, j, c) for j, c in enumerate(tool_calls)]
            self.finish_reason = "tool_calls"
            return
        prefix_text = _tool_results_text(messages) if has_tool_results else ""
        if d.get("echo"):
            # The request as received (minus the streaming options), one JSON object: tests
            # read from the answer which parameters and messages reached the provider.
            echoed = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            self.pieces_text = [orjson.dumps(echoed).decode()]
        elif "text" in d:
            self.pieces_text = split_text(prefix_text + str(d["text"]))
        elif prefix_text:
            self.pieces_text = split_text(prefix_text) + [self.pattern.format(i=i) for i in range(n_tokens)]
        n_content = len(self.pieces_text) if self.pieces_text is not None else n_tokens
        self.finish_reason = "stop"
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(max_tokens, int) and 0 <= max_tokens < n_content:
            n_content = max_tokens
            self.finish_reason = "length"
            if self.pieces_text is not None:
                self.pieces_text = self.pieces_text[:n_content]
        self.n_content = n_content

    def n_frames(self) -> int:
        if self.calls is None:
            return self.n_content
        return sum(1 + len(_arg_pieces(c["function"]["arguments"])) for c in self.calls)


def _norm_call(req_id: str, j: int, c: Any) -> dict:
    if not isinstance(c, dict):
        c = {"name": str(c)}
    args = c.get("arguments", {})
    if not isinstance(args, str):
        args = json.dumps(args)
    return {
        "id": c.get("id") or f"call_{req_id.rsplit('-', 1)[-1]}_{j}",
        "type": "function",
        "function": {"name": str(c.get("name", "tool")), "arguments": args},
    }


def _arg_pieces(args: str) -> list[str]:
    if len(args) < 2:
        return [args, ""]
    size = max(1, min(8, len(args) // 2))
    return [args[i : i + size] for i in range(0, len(args), size)]


def _tool_results_text(messages: list) -> str:
    names: dict[str, str] = {}
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant":
            for tc in m.get("tool_calls") or ():
                if isinstance(tc, dict):
                    fn = tc.get("function") or {}
                    if tc.get("id") and fn.get("name"):
                        names[tc["id"]] = fn["name"]
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") in ("tool", "function"):
            tcid = m.get("tool_call_id") or ""
            name = m.get("name") or names.get(tcid) or tcid or "tool"
            out.append(f"[tool:{name} {_content_text(m.get('content'))[:200]}] ")
    return "".join(out)


# --------------------------------------------------------------------------- other families
#
# Anthropic Messages, Gemini streamGenerateContent and Cohere chat v2 in their own wire
# formats, so that litellm's provider code (what production runs for them) is what parses
# the answer. A request is first read into the OpenAI shape (messages, tools, max_tokens)
# that _Plan already understands, so the same [[sim ...]] directives steer every family;
# the answer is then written as that family's events, through the same scheduler.


def _sse(event: bytes, obj: Any) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (event, orjson.dumps(obj))


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return ""
    if isinstance(part.get("text"), str):
        return part["text"]
    document = part.get("document")
    if isinstance(document, dict):  # a Cohere tool result
        data = document.get("data")
        return data if isinstance(data, str) else orjson.dumps(data).decode()
    return ""


def _blocks_text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(t for t in map(_part_text, content) if t)
    return _part_text(content)


class Family:
    """One provider protocol: how its request reads and how its answer is written."""

    name = ""
    finish: dict[str, str] = {}
    content_type = "text/event-stream; charset=utf-8"
    fields: frozenset[str] = frozenset()  # the request's top-level fields, when the API refuses others

    def normalize(self, body: dict) -> dict:
        raise NotImplementedError

    def refuse(self, body: dict) -> str | None:
        """Why the API would refuse this request (400), beyond unknown fields; None: it takes it."""
        return None

    def error(self, status: int | str, message: str | None) -> web.Response:
        raise NotImplementedError

    def frames(self, plan: _Plan, texts: list[str], completion: int) -> tuple[bytes, list[bytes], bytes]:
        raise NotImplementedError

    def stream_error(self) -> bytes:
        return b""

    def api_key(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None

    def complete(self, plan: _Plan, text: str, completion: int) -> dict:
        raise NotImplementedError

    @staticmethod
    def status_of(status: int | str) -> int:
        if status == "context_length_exceeded":
            return 400
        try:
            return int(status)
        except (TypeError, ValueError):
            return 500

    @staticmethod
    def headers_for(code: int) -> dict[str, str]:
        return {"Retry-After": "0"} if code == 429 else {}


class Anthropic(Family):
    name = "anthropic"
    finish = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
    types = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
             529: "overloaded_error"}
    fields = frozenset({"model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "stream",
                        "temperature", "top_k", "top_p", "tools", "tool_choice", "thinking", "output_format",
                        "output_config", "service_tier", "container", "mcp_servers", "context_management"})

    def normalize(self, body: dict) -> dict:
        messages: list[dict] = []
        if body.get("system"):
            messages.append({"role": "system", "content": _blocks_text(body["system"])})
        for m in body.get("messages") or ():
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, str):
                messages.append({"role": m.get("role"), "content": content})
                continue
            texts, calls = [], []
            for block in content or ():
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "text":
                    texts.append(str(block.get("text", "")))
                elif kind == "tool_use":
                    calls.append({"id": block.get("id"), "type": "function", "function": {
                        "name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
                elif kind == "tool_result":
                    messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                                     "content": _blocks_text(block.get("content"))})
            if texts or calls:
                msg: dict = {"role": m.get("role"), "content": " ".join(texts)}
                if calls:
                    msg["tool_calls"] = calls
                messages.append(msg)
        choice: dict = body["tool_choice"] if isinstance(body.get("tool_choice"), dict) else {}
        return {"model": body.get("model"), "messages": messages, "tools": body.get("tools"),
                "max_tokens": body.get("max_tokens"), "tool_choice": "none" if choice.get("type") == "none" else None,
                "forced_tool": choice.get("name") if choice.get("type") == "tool" else None}

    def error(self, status: int | str, message: str | None) -> web.Response:
        code = self.status_of(status)
        if status == "context_length_exceeded":
            message = message or "prompt is too long: 210000 tokens > 200000 maximum"
        kind = self.types.get(code, "api_error" if code >= 500 else "invalid_request_error")
        body = {"type": "error", "error": {"type": kind, "message": message or f"{kind} (simulated)"}}
        return web.Response(status=code, body=orjson.dumps(body), content_type=JSON_CT,
                            headers=self.headers_for(code))

    def _call_id(self, call: dict) -> str:
        return "toolu_" + call["id"].removeprefix("call_")

    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key")

    def frames(self, plan: _Plan, texts: list[str], completion: int) -> tuple[bytes, list[bytes], bytes]:
        message = {"id": "msg_" + plan.req_id, "type": "message", "role": "assistant", "model": plan.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": 1}}
        head = _sse(b"message_start", {"type": "message_start", "message": message})
        middles: list[bytes] = []
        tail = b""
        if plan.calls is None:
            head += _sse(b"content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}})
            head += _sse(b"ping", {"type": "ping"})
            middles = [_sse(b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "text_delta", "text": t}}) for t in texts]
            tail = _sse(b"content_block_stop", {"type": "content_block_stop", "index": 0})
        else:
            for j, call in enumerate(plan.calls):
                fn = call["function"]
                block = {"type": "tool_use", "id": self._call_id(call), "name": fn["name"], "input": {}}
                middles.append(_sse(b"content_block_start", {"type": "content_block_start", "index": j,
                                                             "content_block": block}))
                middles += [_sse(b"content_block_delta", {"type": "content_block_delta", "index": j, "delta": {
                    "type": "input_json_delta", "partial_json": piece}}) for piece in _arg_pieces(fn["arguments"])]
                middles.append(_sse(b"content_block_stop", {"type": "content_block_stop", "index": j}))
        tail += _sse(b"message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": self.finish[plan.finish_reason],
                                                  "stop_sequence": None},
                                        "usage": {"output_tokens": completion}})
        tail += _sse(b"message_stop", {"type": "message_stop"})
        return head, middles, tail

    def stream_error(self) -> bytes:
        return _sse(b"error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})

    def complete(self, plan: _Plan, text: str, completion: int) -> dict:
        if plan.calls is None:
            content: list[dict] = [{"type": "text", "text": text}]
        else:
            content = [{"type": "tool_use", "id": self._call_id(c), "name": c["function"]["name"],
                        "input": json.loads(c["function"]["arguments"] or "{}")} for c in plan.calls]
        return {"id": "msg_" + plan.req_id, "type": "message", "role": "assistant", "model": plan.model,
                "content": content, "stop_reason": self.finish[plan.finish_reason], "stop_sequence": None,
                "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": completion}}


class Gemini(Family):
    name = "gemini"
    finish = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
    statuses = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

    def normalize(self, body: dict) -> dict:
        messages: list[dict] = []
        system = body.get("systemInstruction") or body.get("system_instruction")
        if isinstance(system, dict):
            messages.append({"role": "system", "content": _blocks_text(system.get("parts"))})
        for c in body.get("contents") or ():
            if not isinstance(c, dict):
                continue
            texts, calls = [], []
            for part in c.get("parts") or ():
                if not isinstance(part, dict):
                    continue
                call = part.get("functionCall") or part.get("function_call")
                result = part.get("functionResponse") or part.get("function_response")
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                if isinstance(call, dict):
                    calls.append({"id": call.get("id") or call.get("name"), "type": "function", "function": {
                        "name": call.get("name"), "arguments": json.dumps(call.get("args") or {})}})
                if isinstance(result, dict):
                    messages.append({"role": "tool", "name": result.get("name"),
                                     "content": orjson.dumps(result.get("response")).decode()})
            if texts or calls:
                msg: dict = {"role": "assistant" if c.get("role") == "model" else "user", "content": " ".join(texts)}
                if calls:
                    msg["tool_calls"] = calls
                messages.append(msg)
        config = body.get("generationConfig") or body.get("generation_config") or {}
        mode = (((body.get("toolConfig") or body.get("tool_config") or {}).get("functionCallingConfig")
                 or {}).get("mode"))
        return {"model": body.get("model"), "messages": messages, "tools": body.get("tools"),
                "max_tokens": config.get("maxOutputTokens") or config.get("max_output_tokens"),
                "tool_choice": "none" if mode == "NONE" else None}

    def error(self, status: int | str, message: str | None) -> web.Response:
        code = self.status_of(status)
        if status == "context_length_exceeded":
            message = message or ("The input token count (1200000) exceeds the maximum number of tokens "
                                  "allowed (1048576).")
        kind = self.statuses.get(code, "INTERNAL" if code >= 500 else "INVALID_ARGUMENT")
        body = {"error": {"code": code, "message": message or f"{kind} (simulated)", "status": kind}}
        return web.Response(status=code, body=orjson.dumps(body), content_type=JSON_CT,
                            headers=self.headers_for(code))

    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    def _chunk(self, plan: _Plan, parts: list[dict], **extra: Any) -> bytes:
        candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if "finishReason" in extra:
            candidate["finishReason"] = extra.pop("finishReason")
        obj = {"candidates": [candidate], **extra, "modelVersion": plan.model, "responseId": plan.req_id}
        return b"data: %b\r\n\r\n" % orjson.dumps(obj)

    def frames(self, plan: _Plan, texts: list[str], completion: int) -> tuple[bytes, list[bytes], bytes]:
        if plan.calls is None:
            middles = [self._chunk(plan, [{"text": t}]) for t in texts]
        else:
            middles = [self._chunk(plan, [{"functionCall": {"name": c["function"]["name"],
                                                            "args": json.loads(c["function"]["arguments"] or "{}")}}])
                       for c in plan.calls]
        usage = {"promptTokenCount": plan.prompt_tokens, "candidatesTokenCount": completion,
                 "totalTokenCount": plan.prompt_tokens + completion}
        tail = self._chunk(plan, [{"text": ""}], finishReason=self.finish[plan.finish_reason], usageMetadata=usage)
        return b"", middles, tail

    def stream_error(self) -> bytes:
        err = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                         "status": "UNAVAILABLE"}}
        return b"data: %b\r\n\r\n" % orjson.dumps(err)

    def complete(self, plan: _Plan, text: str, completion: int) -> dict:
        obj = orjson.loads(self.frames(plan, [text], completion)[2][6:])
        if plan.calls is not None:
            obj["candidates"][0]["content"]["parts"] = [
                {"functionCall": {"name": c["function"]["name"],
                                  "args": json.loads(c["function"]["arguments"] or "{}")}}
                for c in plan.calls]
        else:
            obj["candidates"][0]["content"]["parts"] = [{"text": text}]
        return obj


class Cohere(Family):
    """Chat v2. The stream is SSE whatever the client accepts, as Cohere's v2 reference
    documents it: an `event:` line with the type, a `data:` line with the event (carrying its
    `type` too); message-end, with the usage, is the last event (no [DONE])."""

    name = "cohere"
    finish = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL"}
    event = staticmethod(_sse)
    # The chat v2 request's fields (docs.cohere.com/reference/chat).
    fields = frozenset({"model", "messages", "stream", "tools", "strict_tools", "documents", "citation_options",
                        "response_format", "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed",
                        "frequency_penalty", "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking",
                        "priority"})

    def refuse(self, body: dict) -> str | None:
        fmt = body.get("response_format")
        if fmt is None:
            return None
        # {"type": "text"} or {"type": "json_object", "json_schema": {...}?}, and not with tools
        # or documents, as the reference says.
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object"):
            return "response_format: type must be one of 'text', 'json_object'"
        extra = sorted(set(fmt) - {"type", "json_schema"})
        if extra or ("json_schema" in fmt and (fmt["type"] != "json_object" or not isinstance(fmt["json_schema"],
                                                                                              dict))):
            return f"response_format: invalid field {(extra or ['json_schema'])[0]}"
        if body.get("tools") or body.get("documents"):
            return "response_format is not supported with tools or documents"
        return None

    def normalize(self, body: dict) -> dict:
        messages = []
        for m in body.get("messages") or ():
            if isinstance(m, dict):
                msg = {**m, "content": _blocks_text(m.get("content"))}
                messages.append(msg)
        choice = body.get("tool_choice")
        return {"model": body.get("model"), "messages": messages, "tools": body.get("tools"),
                "max_tokens": body.get("max_tokens"), "tool_choice": "none" if choice == "NONE" else None}

    def error(self, status: int | str, message: str | None) -> web.Response:
        code = self.status_of(status)
        if status == "context_length_exceeded":
            message = message or "too many tokens: total number of tokens in the prompt cannot exceed 128000"
        body = {"id": "sim-error", "message": message or f"simulated error {code}"}
        return web.Response(status=code, body=orjson.dumps(body), content_type=JSON_CT,
                            headers=self.headers_for(code))

    def frames(self, plan: _Plan, texts: list[str], completion: int) -> tuple[bytes, list[bytes], bytes]:
        head = self.event(b"message-start", {"type": "message-start", "id": plan.req_id, "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}})
        tail = b""
        if plan.calls is None:
            head += self.event(b"content-start", {"type": "content-start", "index": 0,
                                            "delta": {"message": {"content": {"type": "text", "text": ""}}}})
            middles = [self.event(b"content-delta", {"type": "content-delta", "index": 0,
                                               "delta": {"message": {"content": {"text": t}}}}) for t in texts]
            tail = self.event(b"content-end", {"type": "content-end", "index": 0})
        else:
            middles = []
            for j, call in enumerate(plan.calls):
                fn = call["function"]
                start = {"id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}
                middles.append(self.event(b"tool-call-start", {"type": "tool-call-start", "index": j,
                                                               "delta": {"message": {"tool_calls": start}}}))
                for piece in _arg_pieces(fn["arguments"]):
                    middles.append(self.event(b"tool-call-delta", {"type": "tool-call-delta", "index": j, "delta": {
                        "message": {"tool_calls": {"function": {"arguments": piece}}}}}))
                middles.append(self.event(b"tool-call-end", {"type": "tool-call-end", "index": j}))
        tokens = {"input_tokens": plan.prompt_tokens, "output_tokens": completion}
        tail += self.event(b"message-end", {"type": "message-end", "delta": {
            "finish_reason": self.finish[plan.finish_reason], "usage": {"billed_units": tokens, "tokens": tokens}}})
        return head, middles, tail

    def complete(self, plan: _Plan, text: str, completion: int) -> dict:
        message: dict = {"role": "assistant"}
        if plan.calls is None:
            message["content"] = [{"type": "text", "text": text}]
        else:
            message["tool_calls"] = plan.calls
        tokens = {"input_tokens": plan.prompt_tokens, "output_tokens": completion}
        return {"id": plan.req_id, "message": message, "finish_reason": self.finish[plan.finish_reason],
                "usage": {"billed_units": tokens, "tokens": tokens}}


ANTHROPIC, GEMINI, COHERE = Anthropic(), Gemini(), Cohere()


# --------------------------------------------------------------------------- running

SIMULATOR_KEY = web.AppKey("simulator", Simulator)


async def start_simulator(
    host: str = "127.0.0.1", port: int = 0, *, print_banner: bool = False, **defaults: Any
) -> tuple[web.AppRunner, str]:
    """Start in the running loop; returns ``(runner, url)`` with url = ``http://host:port``.

    OpenAI clients should use ``url + "/v1"`` as base_url (``url`` also works, the
    routes are aliased).  Stop with ``await runner.cleanup()``.  The ``Simulator``
    is reachable as ``runner.app[SIMULATOR_KEY]``.
    """
    sim = Simulator(SimConfig(**defaults))
    app = sim.make_app()
    app[SIMULATOR_KEY] = sim
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    real_port = runner.addresses[0][1] if runner.addresses else port
    url = f"http://{host}:{real_port}"
    if print_banner:
        print(f"simulator listening on {url}", flush=True)
    return runner, url


class SimulatorThread:
    """Run the simulator in a background thread (own event loop).

    >>> with SimulatorThread(tokens=5) as sim:
    ...     sim.url, sim.base_url
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **defaults: Any) -> None:
        self.host, self.port, self.defaults = host, port, defaults
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> SimulatorThread:
        self._thread = threading.Thread(target=self._run, name="llm-simulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._runner, self.url = loop.run_until_complete(start_simulator(self.host, self.port, **self.defaults))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_FLAG_NAMES = {
    "ttft_ms": "--ttft-ms",
    "tokens": "--tokens",
    "interval_ms": "--interval-ms",
    "token_text": "--token-text",
    "require_key": "--require-key",
    "max_records": "--max-records",
    "scheduler": "--scheduler",
}


class SimulatorProcess:
    """Run the simulator as a subprocess (``port=0`` picks a free port).

    >>> with SimulatorProcess(tokens=5, interval_ms=10) as sim:
    ...     sim.url, sim.base_url, sim.pid

    ``use_module=True`` runs ``python -m devtools.simulator`` (imports the
    mageagent package __init__); the default runs server.py as a script, which
    imports only aiohttp/orjson and starts faster.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        use_module: bool = False,
        python: str | None = None,
        extra_args: list[str] | None = None,
        startup_timeout: float = 30.0,
        **defaults: Any,
    ) -> None:
        self.host, self.port = host, port
        self.use_module = use_module
        self.python = python or sys.executable
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.defaults = defaults
        self.proc: subprocess.Popen | None = None
        self.url = ""

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        if self.use_module:
            cmd = [self.python, "-m", "devtools.simulator"]
        else:
            cmd = [self.python, os.path.abspath(__file__)]
        cmd += ["--host", self.host, "--port", str(self.port)]
        for k, v in self.defaults.items():
            if k == "uvloop":
                if not v:
                    cmd.append("--no-uvloop")
                continue
            if v is None:
                continue
            cmd += [_FLAG_NAMES.get(k, "--" + k.replace("_", "-")), str(v)]
        return cmd + self.extra_args

    def start(self) -> SimulatorProcess:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=None, env=env, cwd=root, text=True)
        deadline = time.monotonic() + self.startup_timeout
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(5)
                raise RuntimeError(f"simulator exited early (rc={self.proc.returncode})")
            m = re.search(r"simulator listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("simulator did not start in time")
        # keep draining stdout so the child never blocks on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        try:
            for _ in self.proc.stdout:  # type: ignore[union-attr]
                pass
        except (ValueError, OSError):
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _env(name: str, default: Any) -> Any:
    return os.environ.get("MAGEAGENT_SIM_" + name, default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m devtools.simulator",
        description="OpenAI-compatible LLM simulator (development/test tool).",
    )
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(_env("PORT", 8900)), help="0 = pick a free port")
    p.add_argument("--ttft-ms", type=float, default=float(_env("TTFT_MS", 0)))
    p.add_argument("--tokens", type=int, default=int(_env("TOKENS", 20)))
    p.add_argument("--interval-ms", type=float, default=float(_env("INTERVAL_MS", 0)))
    p.add_argument("--token-text", default=_env("TOKEN_TEXT", "tok{i} "), help="pattern, {i} = token index")
    p.add_argument("--require-key", default=_env("REQUIRE_KEY", None))
    p.add_argument("--max-records", type=int, default=int(_env("MAX_RECORDS", 200_000)))
    p.add_argument("--scheduler", choices=("shared", "sleep"), default=_env("SCHEDULER", "shared"))
    p.add_argument("--no-uvloop", action="store_true", default=bool(_env("NO_UVLOOP", "")))
    return p


async def _serve(args: argparse.Namespace) -> None:
    runner, _url = await start_simulator(
        args.host,
        args.port,
        print_banner=True,
        ttft_ms=args.ttft_ms,
        tokens=args.tokens,
        interval_ms=args.interval_ms,
        token_text=args.token_text,
        require_key=args.require_key,
        max_records=args.max_records,
        scheduler=args.scheduler,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            pass
        else:
            uvloop.run(_serve(args))
            return
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
