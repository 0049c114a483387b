"""One attempt of one task, on the worker's event loop: stream the model's answer (and run
tools it asks for), append events as they come, and report how the attempt ended.

Database work stays in the Celery thread (tasks/runtime/executor.py); this module only
touches Redis and the provider, so nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from mageagent import tracing
from mageagent.logging import log_context_add
from providers.llm import Delta, Deployment, ProviderError, stream_chat, supported_params
from tasks import events
from tools.registry import ToolContext, ToolResult, tool_invoke

from .completion import routed_complete
from .loop import runtime

logger = logging.getLogger(__name__)


class Fenced(Exception):
    """Another attempt (or a closer) owns the task's log now: stop without writing."""


@dataclass
class AttemptPlan:
    task_id: str
    attempt: int
    owner: str
    messages: list[dict[str, Any]]
    deployment: Deployment
    start_events: list[bytes]
    company_id: int | None = None
    tool_specs: list[dict[str, Any]] = field(default_factory=list)
    # The client's own functions (OpenAI `tools`): offered with the platform's, but a call to
    # one ends the attempt with the call in the result, for the client to run.
    client_tools: list[dict[str, Any]] = field(default_factory=list)
    # Sampling parameters sent with every call (temperature, stop, response_format, ...).
    params: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    max_tool_rounds: int = 4
    coalesce_s: float = 0.05
    time_limit_s: float = 300.0
    # routing.runtime.AttemptRouter: where each call goes, fallbacks, rate limits, budget,
    # cost. Without one, every call goes to `deployment`.
    router: Any = None
    # The ids of the task's log lines (mageagent/logging.py), for the loop's asyncio task.
    log: dict[str, Any] = field(default_factory=dict)
    # The trace context of the Celery thread that runs the attempt (mageagent/tracing.py).
    trace_context: Any = None
    # The last seq this attempt wrote into the task's log: where a log that Redis lost (an
    # empty restart) continues, so that its followers' positions stay valid (_hand_back).
    written: int = 0


@dataclass
class AttemptOutcome:
    status: str  # completed | cancelled | failed | fenced | timeout | lost (its log could not be written)
    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    error: ProviderError | None = None
    tool_rounds: int = 0
    usage_reported: bool = False
    client_tool_calls: list[dict[str, Any]] | None = None
    # The answer's pace (tasks/progress.py measures models with it): tokens streamed, the
    # seconds from the attempt's start to the first, and from the first to the last.
    tokens: int = 0
    first_token_s: float | None = None
    streaming_s: float = 0.0


# A window is due this close to its end: a read paced to the end (httpstream.Stream.reads)
# can come a timer tick (1 ms in uvloop) early or late. The window's timer fires this much
# after the end, so that such a read, not the timer, sends the chunk: inline, with no task.
DUE_S = 0.002
# How often a stream's token count is written for the Task's `progress`.
PROGRESS_EVERY_S = 1.0


class ChunkEmitter:
    """Coalesces tokens into chunk events: the first token goes out at once, later ones at
    most every `window` seconds, so a fast stream costs one Redis call per window. Adding a
    token inside a window only buffers it (this runs once per read of every stream the
    worker holds). The window's append is made by the stream's next read when that comes
    by the window's end (paced reads do), else by a timer, whose failed append stops the
    attempt through `_after_background_flush`."""

    def __init__(self, plan: AttemptPlan) -> None:
        self.plan = plan
        self.task_id, self.owner, self.window = plan.task_id, plan.owner, plan.coalesce_s
        self.attempt = plan.attempt
        self.buffer: list[str] = []
        self.sent: list[str] = []
        self.last_flush = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.lock = asyncio.Lock()
        self.failure: BaseException | None = None
        self.owner_task = asyncio.current_task()
        self.tokens = 0
        self.first_at: float | None = None
        self.progress_at = 0.0

    def add(self, text: str) -> bool:
        """Buffer a token; True when its window has passed and the caller should flush now
        (the first token, or one after a pause), so that it waits for no loop turn."""
        self.buffer.append(text)
        self.tokens += 1  # a delta is a token, near enough (providers stream one per delta)
        wait = self.last_flush + self.window - time.monotonic()
        if wait <= DUE_S:
            return True
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(wait + DUE_S, self._flush_later)
        return False

    def _flush_later(self) -> None:
        self.timer = None
        task = asyncio.ensure_future(self.flush())
        task.add_done_callback(self._after_background_flush)

    def _after_background_flush(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self.owner_task is not None:
            self.failure = task.exception()
            runtime.cancel_reasons[self.task_id] = "fenced" if isinstance(self.failure, Fenced) else "lost"
            self.owner_task.cancel()

    async def flush(self) -> None:
        async with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if not self.buffer:
                return
            text = "".join(self.buffer)
            self.buffer.clear()
            self.last_flush = time.monotonic()
            now = self.last_flush
            due = now - self.progress_at >= PROGRESS_EVERY_S if self.first_at is not None else False
            if due:  # coarse: not per chunk, and carried by this append (no call of its own)
                self.progress_at = now
            appended = events.aappend(self.task_id, events.encode("chunk", content=text), owner=self.owner,
                                      tokens=self.tokens if due else None)
            try:
                seq = await asyncio.shield(appended)
            except asyncio.CancelledError:
                # Cancelled with the append in flight: it may still land in the log, and the
                # partial answer kept must be what the log holds (the contract's invariant).
                try:
                    if await appended >= 0:
                        self.sent.append(text)
                except Exception:
                    pass
                raise
            if seq < 0:
                raise Fenced()
            self.plan.written = seq
            self.sent.append(text)
            if self.first_at is None:
                # The count's first record is a second into the answer: most answers end sooner,
                # and a finished task's progress is read from its usage.
                self.first_at = self.progress_at = self.last_flush

    def pace(self) -> float:
        """Seconds until this window ends: the provider's socket need not be read before,
        since what it brings would only be buffered. 0 before the first chunk went out, so
        the first token is read and sent at once."""
        if not self.last_flush or not self.window:
            return 0.0
        return self.last_flush + self.window - time.monotonic()

    @property
    def content(self) -> str:
        return "".join(self.sent)

    def mark(self) -> int:
        return len(self.sent)

    def since(self, mark: int) -> str:
        return "".join(self.sent[mark:]) + "".join(self.buffer)

    async def rewind(self, mark: int) -> list[bytes]:
        """Drop what was streamed since `mark` (a call that failed and falls back). Chunks
        already in the log cannot be taken back, so the answer restarts: a `reset` (same
        attempt) and, in one chunk, what earlier calls of this attempt had streamed."""
        async with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.buffer.clear()
            if len(self.sent) == mark:
                return []
            kept = "".join(self.sent[:mark])
            self.sent = [kept] if kept else []
            bodies = [events.encode("reset", attempt=self.attempt)]
            if kept:
                bodies.append(events.encode("chunk", content=kept))
            return bodies


async def _append(plan: AttemptPlan, *bodies: bytes) -> None:
    seq = await events.aappend(plan.task_id, *bodies, owner=plan.owner)
    if seq < 0:
        raise Fenced()
    plan.written = seq


def _merge_tool_calls(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for d in deltas:
        call = calls.setdefault(d.get("index", len(calls)), {"id": None, "name": "", "arguments": ""})
        if d.get("id"):
            call["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            call["name"] = fn["name"]
        if fn.get("arguments"):
            call["arguments"] += fn["arguments"]


async def _run_tools(plan: AttemptPlan, calls: list[dict[str, Any]], messages: list[dict[str, Any]],
                     text: str | None = None) -> None:
    """Run one round's calls concurrently. `text` is what the model streamed before its
    calls this round: the assistant message keeps it, or the next round loses it."""
    await _append(plan, *(events.encode("tool_call", id=c["id"], name=c["name"], arguments=c["arguments"])
                          for c in calls))
    # Only the tools the task asked for, whatever the model calls.
    allowed = frozenset(spec["function"]["name"] for spec in plan.tool_specs)
    ctx = ToolContext(task_id=plan.task_id, company_id=plan.company_id, allowed_tools=allowed,
                      complete=routed_complete(plan.company_id))

    async def invoke(call: dict[str, Any]) -> ToolResult:
        with tracing.span(f"execute_tool {call['name']}", gen_ai__operation__name="execute_tool",
                          gen_ai__tool__name=call["name"], gen_ai__tool__call__id=call["id"]) as span:
            result = await tool_invoke(call["name"], call["arguments"], ctx)
            if not result.ok:
                tracing.failed(span, "tool_error")
        # Live: a quick tool's result goes out while a slow one still runs.
        await _append(plan, events.encode("tool_result", id=call["id"], name=call["name"], ok=result.ok,
                                          content=result.content))
        return result

    running = [asyncio.ensure_future(invoke(c)) for c in calls]
    try:
        results = await asyncio.gather(*running)
    except BaseException:
        # Fenced or cancelled: no tool may outlive the round (gather alone leaves the rest
        # running when one fails); wait for their clean-up, e.g. the sandbox's kill.
        for task in running:
            task.cancel()
        await asyncio.shield(asyncio.gather(*running, return_exceptions=True))
        raise
    messages.append({"role": "assistant", "content": text or None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]})
    # In call order, whatever order they finished in.
    messages.extend({"role": "tool", "tool_call_id": c["id"], "content": r.content}
                    for c, r in zip(calls, results, strict=True))


async def _stream_call(deployment: Deployment, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                       emitter: ChunkEmitter, outcome: AttemptOutcome, calls: dict[int, dict[str, Any]],
                       usage: dict[str, int], max_tokens: int | None = None,
                       params: dict[str, Any] | None = None) -> None:
    delta: Delta
    # One span per call, never per chunk: the loop below is the per-chunk path.
    with tracing.llm_call(provider=deployment.provider, model=deployment.model, max_tokens=max_tokens,
                          params=params) as span:
        try:
            async for delta in stream_chat(deployment, messages, tools=tools, max_tokens=max_tokens,
                                           pace=emitter.pace, params=params):
                if delta.content and emitter.add(delta.content):
                    await emitter.flush()
                if delta.tool_calls:
                    _merge_tool_calls(calls, delta.tool_calls)
                if delta.finish_reason:
                    outcome.finish_reason = delta.finish_reason
                if delta.usage:
                    for key in ("prompt_tokens", "completion_tokens"):
                        usage[key] = usage.get(key, 0) + int(delta.usage.get(key) or 0)
        except ProviderError as exc:
            tracing.failed(span, exc.code)
            raise
        finally:
            tracing.llm_call_done(span, usage=usage, finish_reason=outcome.finish_reason)
    await emitter.flush()


async def _stream_round(plan: AttemptPlan, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                        emitter: ChunkEmitter, outcome: AttemptOutcome) -> list[dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    if plan.router is None:
        usage: dict[str, int] = {}
        await _stream_call(plan.deployment, messages, tools, emitter, outcome, calls, usage, plan.max_tokens,
                           plan.params)
        if usage:
            outcome.usage_reported = True
            for key in ("prompt_tokens", "completion_tokens"):
                outcome.usage[key] += usage.get(key, 0)
    else:
        await _routed_call(plan, messages, tools, emitter, outcome, calls)
    for index, call in calls.items():
        call["id"] = call["id"] or f"call_{index}"
    return [calls[i] for i in sorted(calls)]


async def _routed_call(plan: AttemptPlan, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                       emitter: ChunkEmitter, outcome: AttemptOutcome, calls: dict[int, dict[str, Any]]) -> None:
    """One call through the router: on a provider error it moves to the next deployment
    or candidate model (a `fallback` step), restarting the answer if chunks went out."""
    router = plan.router
    while True:
        target = await router.begin_call(
            messages, lambda name, detail: _append(plan, events.encode("step", name=name, detail=detail)))
        mark, usage = emitter.mark(), dict[str, int]()
        cap = min(filter(None, (target.max_tokens, plan.max_tokens)), default=None)
        params = _supported(plan, target.runtime, bool(tools))
        if len(params) < len(plan.params):
            dropped = sorted(set(plan.params) - set(params))
            await _append(plan, events.encode("step", name="params_dropped", detail={
                "model": target.model, "params": dropped,
                "reason": "the model's provider does not take these parameters"}))
        try:
            await _stream_call(target.runtime, messages, tools, emitter, outcome, calls, usage, cap, params)
        except ProviderError as exc:
            streamed = emitter.since(mark) + "".join(c["arguments"] for c in calls.values())
            await router.end_call(target, usage=usage, streamed=streamed, error=exc)
            detail = await router.fallback(exc)
            if detail is None:
                raise
            calls.clear()
            outcome.finish_reason = None
            await _append(plan, *await emitter.rewind(mark), events.encode("step", name="fallback", detail=detail))
            continue
        except BaseException:  # cancelled, timed out or fenced: book what was used, then stop
            streamed = emitter.since(mark) + "".join(c["arguments"] for c in calls.values())
            await router.end_call(target, usage=usage, streamed=streamed)
            raise
        await router.end_call(target, usage=usage, streamed=emitter.since(mark))
        return


def _supported(plan: AttemptPlan, deployment: Deployment, tools: bool) -> dict[str, Any]:
    """The task's parameters this deployment takes (with or without `tools`): all of them for
    an OpenAI-compatible endpoint, the provider's path's list for the others."""
    if not plan.params or deployment.openai_compatible:
        return plan.params
    names = supported_params(deployment, tools=tools)
    return plan.params if names is None else {k: v for k, v in plan.params.items() if k in names}


async def run_attempt(plan: AttemptPlan) -> AttemptOutcome:
    this = asyncio.current_task()
    assert this is not None
    log_context_add(**plan.log)  # this asyncio task's own context
    tracing.attach(plan.trace_context)  # as is its trace's: the Celery thread's task run
    runtime.register(plan.task_id, this)
    outcome = AttemptOutcome(status="completed")
    emitter = ChunkEmitter(plan)
    began = time.monotonic()
    try:
        async with asyncio.timeout(plan.time_limit_s) as limit:
            if plan.router is not None:
                plan.router.time_limit = limit  # rate-limit waits push it back (routing/runtime.py)
            await _append(plan, *plan.start_events)
            messages = list(plan.messages)
            client_names = frozenset(spec["function"]["name"] for spec in plan.client_tools)
            for round_no in range(plan.max_tool_rounds + 1):
                offered = plan.tool_specs if round_no < plan.max_tool_rounds else []
                tools = [*offered, *plan.client_tools] or None
                # An offset, not emitter.mark(): a fallback's rewind merges the chunks sent so far.
                streamed_before = len(emitter.content)
                calls = await _stream_round(plan, messages, tools, emitter, outcome)
                if calls and client_names and any(c["name"] in client_names for c in calls):
                    # The client runs these (as OpenAI answers them); a platform call in the
                    # same round is not run, the client's answer starts the next request.
                    outcome.client_tool_calls = [c for c in calls if c["name"] in client_names]
                    outcome.finish_reason = "tool_calls"
                    await _append(plan, *(events.encode("tool_call", id=c["id"], name=c["name"],
                                                        arguments=c["arguments"], client=True)
                                          for c in outcome.client_tool_calls))
                    break
                if not calls or tools is None or not offered:
                    break  # an answer, or calls on the last round where no tools were offered
                outcome.tool_rounds += 1
                await _run_tools(plan, calls, messages, text=emitter.content[streamed_before:])
    except asyncio.CancelledError:
        reason = runtime.cancel_reasons.pop(plan.task_id, None)
        if reason is None:
            raise  # the loop itself is shutting down
        outcome.status = reason if reason in ("fenced", "lost") else "cancelled"
        if outcome.status == "cancelled":
            await _flush_quietly(emitter)
    except TimeoutError:
        outcome.status = "timeout"
        await _flush_quietly(emitter)
    except Fenced:
        outcome.status = "fenced"
    except RedisError:
        # Redis failed under the attempt (restarted, unreachable): the log cannot follow the
        # answer, so the attempt stops here and the executor hands the task back.
        logger.warning("task %s: its event log could not be written; the attempt stops", plan.task_id,
                       exc_info=True)
        outcome.status = "lost"
    except ProviderError as exc:
        outcome.status, outcome.error = "failed", exc
        await _flush_quietly(emitter)
    finally:
        runtime.unregister(plan.task_id)
        if emitter.timer is not None:
            emitter.timer.cancel()
        if plan.router is not None:
            await plan.router.close()
    outcome.content = emitter.content
    outcome.tokens = emitter.tokens
    if emitter.first_at is not None:
        outcome.first_token_s = emitter.first_at - began
        outcome.streaming_s = emitter.last_flush - emitter.first_at
    return outcome


async def _flush_quietly(emitter: ChunkEmitter) -> None:
    try:
        await emitter.flush()
    except Fenced:
        pass

