"""Runs one attempt of a task for the Celery task: the database work here, in the Celery
thread; the streaming on the process's event loop (pipeline.py). Every outcome ends in
one guarded transition (tasks/services.py), which writes the log's events for it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection
from django.utils import timezone
from redis.exceptions import RedisError

from mageagent import metrics, tracing
from mageagent.errors import DomainError
from mageagent.logging import log_context_add, log_fields
from providers.conversation import conversation_messages, sampling_params
from routing.budgets import budget_context, spend_record
from routing.deployments import registry
from routing.pricing import cost_usd, usage_estimate
from routing.runtime import AttemptRouter
from routing.services import RoutingDecision, model_select
from tasks import events, progress, selectors, services
from tasks.models import Task, TaskStatus
from tools.knowledge import knowledge_retrieve
from tools.registry import tool_specs

from .heartbeat import WORKER_ID, held
from .loop import runtime
from .pipeline import AttemptOutcome, AttemptPlan, run_attempt

logger = logging.getLogger(__name__)

# The database or Redis failing (not a bug): a task meeting one is handed back, not lost.
DEPENDENCY_ERRORS = (OperationalError, InterfaceError, RedisError)
BEFORE_START_RETRY_S = 2.0


def _messages(task: Task, context_text: str) -> list[dict[str, Any]]:
    return conversation_messages(prompt=task.prompt, messages=task.messages, system=task.system,
                                 context_text=context_text)


def _context(task: Task) -> tuple[str, list[bytes], list[str]]:
    """Additional context plus knowledge-base retrieval when the task asks for it."""
    ctx = task.context or {}
    parts = [ctx["additionalContext"]] if ctx.get("additionalContext") else []
    step_events: list[bytes] = []
    steps: list[str] = []
    if ctx.get("useGraphRAG"):
        query = ctx.get("graphragQuery") or task.prompt
        detail: dict[str, Any] = {"query": query}
        try:
            hits = knowledge_retrieve(company_id=task.company_id, query=query, limit=5)
        except DomainError as exc:  # an external GraphRAG service is down: answer without it
            hits, detail["error"] = [], {"code": exc.code, "message": exc.message}
        if hits:
            parts.append("Relevant context:\n" + "\n\n".join(h["content"] for h in hits))
        detail["results"] = len(hits)
        steps.append("graphrag_retrieval")
        step_events.append(events.encode("step", name="graphrag_retrieval", detail=detail))
    return "\n\n".join(parts), step_events, steps


def execute(task_id: str) -> float | None:
    """Run the task's next attempt. Returns a countdown when it should be retried later.
    The process's heartbeat lists the task meanwhile (heartbeat.held): once this returns or
    raises, a task still `processing` under this worker is the reconciler's to run again."""
    held.add(task_id)
    try:
        _picked(task_id)
        return _execute(task_id)
    finally:
        held.discard(task_id)
        connection.close()  # hundreds of threads share a pool of a few connections


def _picked(task_id: str) -> None:
    # Its slot in the fair window frees as the worker takes it, whatever the task's state (a
    # duplicate or a cancelled task's message frees it too); the next fair pick is sent now.
    try:
        services.task_picked(task_id=task_id)
    except Exception:
        # Redis or the broker is down: the reconciler frees the slot of a task gone from the queue.
        logger.warning("task %s: the fair window could not be told of its pickup", task_id, exc_info=True)


def _execute(task_id: str) -> float | None:
    picked_up = timezone.now()  # started_at: when a worker took it; routing is part of the run
    close_old_connections()
    try:
        task = selectors.task_fetch(task_id)
        if task is None or task.status != TaskStatus.QUEUED:
            return None  # cancelled, finished, or running elsewhere: a duplicate delivery
        log_context_add(company=task.company_id, app=task.app_id, attempt=task.attempts)
        tracing.annotate(mageagent__task__id=task_id, mageagent__company__id=task.company_id,
                         mageagent__task__attempt=task.attempts)
        context_text, step_events, steps = _context(task)
        budget = budget_context(company_id=task.company_id, app_id=task.app_id)
        with tracing.span("mageagent.task.route", gen_ai__request__model=task.model) as route:
            decision = model_select(prompt=task.prompt, model=task.model, tools=task.tools,
                                    context_text=context_text, company_id=task.company_id, budgeted=budget.active,
                                    messages=task.messages, system=task.system, max_tokens=task.max_tokens,
                                    client_tools=task.client_tools)
            if route is not None:
                route.set_attribute("mageagent.routing.model", decision.model)
                route.set_attribute("mageagent.routing.reason", decision.reason)
        registry().ensure([d for c in decision.options + decision.larger for d in c.deployments])
        steps += [f"model_selected:{decision.provider}:{decision.model}", "llm_execution"]
        earlier = float((task.routing or {}).get("spent_usd_all_attempts") or 0.0) if task.attempts > 1 else 0.0
        routing = {**decision.as_dict(), "attempt": task.attempts, "spent_usd_all_attempts": earlier}
        started = services.task_start(task=task, worker=WORKER_ID, routing=routing, steps=steps,
                                      started_at=picked_up)
    except DEPENDENCY_ERRORS:
        # Nothing started: the message runs again later (when the broker is down too, the
        # row stays queued and the reconciler dispatches it).
        logger.warning("task %s: a dependency failed before its start; retrying", task_id, exc_info=True)
        connection.close()
        return BEFORE_START_RETRY_S
    if started is None:
        return None
    attempt = started.attempts
    owner = f"{attempt}-{WORKER_ID}"
    log_context_add(model=decision.model)
    try:
        events.claim(task_id, owner)
        plan = _plan(started, decision, context_text, owner, step_events)
        plan.router = AttemptRouter(task_id=task_id, decision=decision, budget=budget,
                                    base_messages=len(plan.messages), tools=plan.tool_specs)
    except RedisError:
        logger.warning("task %s: Redis failed at its start; handing it back", task_id, exc_info=True)
        _hand_back(started, attempt, list(started.steps), started.routing)
        return None
    connection.close()  # back to the pool while the answer streams
    try:
        outcome = _run_attempt(plan)
    except TimeoutError:
        outcome = AttemptOutcome(status="timeout")
    countdown = _finish(started, plan, decision, outcome)
    # One line per attempt (its ids come from the log context): how it ended, never what it said.
    logger.info("task %s: attempt %d ended %s (%d tokens streamed%s)", task_id, attempt, outcome.status,
                outcome.tokens, f", error {outcome.error.code}" if outcome.error else "")
    return countdown


def _run_attempt(plan: AttemptPlan) -> AttemptOutcome:
    """The attempt on the loop, stopped at TASK_HARD_TIME_LIMIT_S, not counting the time
    it spent waiting for rate limits (which the soft limit does not count either)."""
    plan.trace_context = tracing.current_context()  # the loop's task continues this thread's trace
    future = asyncio.run_coroutine_threadsafe(run_attempt(plan), runtime.ensure_started())
    deadline = time.monotonic() + settings.MAGEAGENT["TASK_HARD_TIME_LIMIT_S"]
    while True:
        try:
            return future.result(max(deadline + plan.router.rate_waited_s - time.monotonic(), 0.0))
        except TimeoutError:
            if deadline + plan.router.rate_waited_s > time.monotonic():
                continue  # it waited for a rate limit meanwhile
            future.cancel()
            raise


def _plan(task: Task, decision: RoutingDecision, context_text: str, owner: str,
          step_events: list[bytes]) -> AttemptPlan:
    routed = decision.as_dict()
    expected = progress.expected_tokens(routed)
    estimate = progress.duration_estimate_ms(model=decision.model, expected=expected)
    start = [events.encode("status", status=TaskStatus.PROCESSING, attempt=task.attempts,
                           progress={"tokens": 0, "expected_tokens": expected}, estimated_duration_ms=estimate)]
    if task.attempts > 1:
        start.append(events.encode("reset", attempt=task.attempts))
    start += step_events
    start.append(events.encode("step", name="model_selected", detail=decision.as_dict()))
    start.append(events.encode("step", name="llm_execution", detail={"model": decision.model}))
    assert decision.deployment is not None or decision.options
    return AttemptPlan(
        task_id=str(task.id), attempt=task.attempts, owner=owner, messages=_messages(task, context_text),
        deployment=decision.deployment or decision.options[0].deployments[0].runtime(), start_events=start,
        company_id=task.company_id,
        tool_specs=tool_specs(task.tools), client_tools=list(task.client_tools or []),
        params={**sampling_params(task), **({"tool_choice": task.tool_choice} if task.tool_choice else {})},
        max_tokens=task.max_tokens, max_tool_rounds=settings.MAGEAGENT.get("MAX_TOOL_ROUNDS", 4),
        coalesce_s=settings.MAGEAGENT["CHUNK_COALESCE_MS"] / 1000.0,
        time_limit_s=settings.MAGEAGENT["TASK_SOFT_TIME_LIMIT_S"], log=log_fields(),
    )


def _result(plan: AttemptPlan, decision: RoutingDecision, outcome: AttemptOutcome,
            finish_reason: str | None) -> dict[str, Any]:
    if plan.router is not None:  # every call's usage, priced at the model that served it
        usage, cost, model = dict(plan.router.usage), plan.router.cost_usd, plan.router.model_label
    else:
        usage = dict(outcome.usage)
        if not outcome.usage_reported:
            usage = usage_estimate(decision.model, plan.messages, outcome.content)
        cost, model = cost_usd(decision.model, usage), plan.deployment.label
    result = {"content": outcome.content, "model": model,
              "tokensUsed": usage["prompt_tokens"] + usage["completion_tokens"],
              "finishReason": finish_reason, "usage": usage, "cost_usd": round(cost, 10)}
    if outcome.client_tool_calls:  # the client's functions to run, as the model asked
        result["tool_calls"] = [{"id": c["id"], "type": "function",
                                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                                for c in outcome.client_tool_calls]
    return result


def _db(transition: Callable[..., bool], **kwargs: Any) -> bool:
    """A guarded transition, tried again while the database is unreachable (connections
    terminated, a restart): the attempt's answer is kept rather than run again. Each try is
    one guarded UPDATE, so a retry after a lost reply cannot apply it twice."""
    deadline = time.monotonic() + settings.MAGEAGENT["DEPENDENCY_WAIT_S"]
    pause = 0.2
    while True:
        try:
            return transition(**kwargs)
        except (OperationalError, InterfaceError):
            connection.close()
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("the database failed a task transition; trying again in %.1f s", pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _hand_back(task: Task, attempt: int, steps: list[str], routing: dict[str, Any] | None,
               written: int = 0) -> None:
    """An attempt whose log was lost or unwritable: run the task again (a new attempt, as
    for a dead worker), or fail it when it is out of attempts. Nothing happens when another
    actor (a cancel, the reconciler) already moved the task on. `written`: the last seq the
    attempt wrote, after which a log Redis lost continues."""
    task_id = str(task.id)
    error = {"code": "worker_lost", "message": "the attempt lost its event log (Redis failed)"}
    reopened = _reopen(task_id, written)
    if attempt >= settings.MAGEAGENT["TASK_MAX_ATTEMPTS"]:
        _db(services.task_fail, task_id=task_id, attempt=attempt, error=error, steps=steps, routing=routing,
            app_id=task.app_id)
        return
    if not _db(services.task_requeue, task_id=task_id, attempt=attempt, steps=steps, routing=routing, error=error):
        return
    metrics.RETRIES.labels(reason="worker_lost").inc()
    logger.warning("task %s: attempt %d lost its event log; queued again", task_id, attempt)
    # Redis is likely still coming back: keep trying for a while, then leave the queued row
    # to the reconciler.
    deadline = time.monotonic() + settings.MAGEAGENT["DEPENDENCY_WAIT_S"]
    while True:
        try:
            # Redis was down at the hand back: the log it comes back without continues too.
            reopened = reopened or _reopen(task_id, written)
            services.task_dispatch(task=task)
            return
        except Exception:
            if time.monotonic() > deadline:
                logger.warning("task %s is queued but the broker did not take it; the reconciler will", task_id)
                return
            time.sleep(0.5)


def _reopen(task_id: str, written: int) -> bool:
    """True once the log is known to continue after `written` (or there is nothing to keep)."""
    if not written:
        return True
    try:
        events.reopen(task_id, written)
        return True
    except RedisError:
        return False


def _finish(task: Task, plan: AttemptPlan, decision: RoutingDecision, outcome: AttemptOutcome) -> float | None:
    task_id, owner, attempt = plan.task_id, plan.owner, plan.attempt
    steps, routing = _record(task, plan)
    _observe(task, decision, outcome)
    if outcome.status in ("fenced", "lost"):
        # Fenced: another actor owns the log; if the row is still this attempt's, nobody
        # does (Redis restarted empty and the log's owner went with it). Lost: Redis failed.
        # Either way the task goes back to the queue unless another actor already moved it.
        _hand_back(task, attempt, steps, routing, plan.written)
        return None
    if outcome.status == "completed":
        result = _result(plan, decision, outcome, outcome.finish_reason or "stop")
        if _db(services.task_complete, task_id=task_id, attempt=attempt, result=result, steps=steps,
               routing=routing, owner=owner, app_id=task.app_id):
            _measure(routing, outcome)
            return None
    elif outcome.status != "cancelled":
        error = ({"code": "timeout", "message": "the task exceeded its time limit"} if outcome.status == "timeout"
                 else outcome.error.as_error() if outcome.error else {"code": "internal_error", "message": "unknown"})
        err = outcome.error
        if err is not None and err.retryable and attempt < settings.MAGEAGENT["TASK_MAX_ATTEMPTS"]:
            if _db(services.task_requeue, task_id=task_id, attempt=attempt, steps=steps, routing=routing,
                   error=error, owner=owner):
                metrics.RETRIES.labels(reason=err.code).inc()
                backoff = settings.MAGEAGENT["RETRY_BACKOFF_S"] * (2 ** (attempt - 1))
                return max(backoff, err.retry_after or 0.0)
        elif _db(services.task_fail, task_id=task_id, attempt=attempt, error=error, steps=steps, routing=routing,
                 owner=owner, app_id=task.app_id):
            return None
    # Cancelled, or its transition refused because the API cancelled it meanwhile.
    _finish_cancelled(plan, decision, outcome)
    return None


def _observe(task: Task, decision: RoutingDecision, outcome: AttemptOutcome) -> None:
    """The attempt's time to first token, and its run time when it ends the task (a retry's
    or a hand-back's attempt is not a task's duration)."""
    if outcome.first_token_s is not None:
        metrics.TIME_TO_FIRST_TOKEN.labels(provider=decision.provider, model=decision.model).observe(
            outcome.first_token_s)
    ended = {"completed": "completed", "cancelled": "cancelled", "timeout": "failed"}.get(outcome.status)
    if outcome.status == "failed" and not (outcome.error is not None and outcome.error.retryable
                                           and task.attempts < settings.MAGEAGENT["TASK_MAX_ATTEMPTS"]):
        ended = "failed"
    if ended is not None and task.started_at is not None:
        metrics.TASK_DURATION.labels(status=ended).observe(
            max((timezone.now() - task.started_at).total_seconds(), 0.0))


def _measure(routing: dict[str, Any], outcome: AttemptOutcome) -> None:
    """Fold this answer's pace into its model's speed (what later estimates use)."""
    model = progress.routed_model(routing)
    if model is None or outcome.first_token_s is None or outcome.tokens < 2 or outcome.streaming_s <= 0:
        return
    try:
        progress.speed_record(model=model, ttft_ms=outcome.first_token_s * 1000,
                              tokens_per_s=(outcome.tokens - 1) / outcome.streaming_s)
    except Exception:
        logger.exception("could not record the speed of %s", model)


def _record(task: Task, plan: AttemptPlan) -> tuple[list[str], dict[str, Any]]:
    """The task's steps and routing record with this attempt's actual use; the spend is
    booked here, whatever the outcome (a broken stream still cost what it streamed)."""
    steps, routing = list(task.steps), dict(task.routing or {})
    router = plan.router
    if router is None:
        return steps, routing
    steps += [f"fallback:{f['to']}" for f in router.fallbacks]
    record = router.record()
    routing.update(record)
    routing["spent_usd_all_attempts"] = round(float(routing.get("spent_usd_all_attempts") or 0.0)
                                              + record["actual_cost_usd"], 10)
    # One ledger row per model that served a call (a fallback's calls book to their own
    # model); the task counts once, for the model that served its last call.
    last = router.calls[-1]["model"] if router.calls else None
    for model, use in _use_by_model(router.calls).items():
        try:
            spend_record(company_id=task.company_id, app_id=task.app_id, model=model, cost_usd=use["cost_usd"],
                         prompt_tokens=use["prompt_tokens"], completion_tokens=use["completion_tokens"],
                         calls=use["calls"], tasks=1 if plan.attempt == 1 and model == last else 0)
        except Exception:
            logger.exception("could not record the spend of task %s", task.id)
    return steps, routing


def _use_by_model(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    use: dict[str, dict[str, Any]] = {}
    for call in calls:
        row = use.setdefault(call["model"], {"cost_usd": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
        row["cost_usd"] += call["cost_usd"]
        row["prompt_tokens"] += call["prompt_tokens"]
        row["completion_tokens"] += call["completion_tokens"]
        row["calls"] += 1
    return use


def _finish_cancelled(plan: AttemptPlan, decision: RoutingDecision, outcome: AttemptOutcome) -> None:
    """The task was cancelled (by the API) while this attempt ran: keep the partial answer."""
    services.task_close_cancelled(task_id=plan.task_id, owner=plan.owner,
                                  result=_result(plan, decision, outcome, "cancelled"))
