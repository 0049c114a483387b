"""Routing during one attempt of a task, on the worker's event loop.

tasks/runtime/pipeline.py asks `begin_call` for where to send each provider call; it
picks the current candidate's healthy deployment (litellm Router), waits for the
deployment's rate limit, and reserves the call's worst-case cost against the budgets.
`end_call` books what the call used (the provider's usage, or a tokenizer count of what
was streamed when the stream broke), settles the reservation and reports failures so
cooldowns apply. `fallback` decides whether an error moves the attempt on: retryable and
auth errors go to the next deployment or candidate (cross-provider by construction),
context-window-exceeded to a larger-context model; anything else fails the attempt.
Built in the Celery thread (executor.py), so nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from django.conf import settings

from mageagent import metrics
from mageagent.errors import BudgetExceeded
from mageagent.ratelimit import rate_limit_acquire, rate_limit_adjust
from providers.llm import Deployment, ProviderError

from .budgets import BudgetContext, abudget_reserve, abudget_settle, task_reservation_id
from .deployments import DeploymentSpec, registry
from .pricing import count_tokens, request_tokens, tokenizer_model
from .services import Candidate, RoutingDecision

# Prompts longer than this are counted in a thread, off the worker's event loop.
LONG_PROMPT_CHARS = 20_000

logger = logging.getLogger(__name__)
# Emit(name, detail): a `step` event of the task, appended by the caller.
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class CallTarget:
    candidate: Candidate
    deployment: DeploymentSpec
    runtime: Deployment
    prompt_tokens: int
    max_tokens: int | None
    reserved_usd: float = 0.0
    probe: bool = False

    @property
    def model(self) -> str:
        return self.candidate.spec.id


@cache
def _call_series(provider: str, model: str) -> tuple[Any, Any, Any, Any]:
    # A labelled child, kept as prometheus_client's docs suggest: labels() takes a lock and
    # builds a key on every call, four times per provider call here.
    return (metrics.PROVIDER_CALLS.labels(provider=provider, model=model),
            metrics.TOKENS.labels(provider=provider, model=model, direction="in"),
            metrics.TOKENS.labels(provider=provider, model=model, direction="out"),
            metrics.COST.labels(provider=provider, model=model))


def _observe_call(provider: str, model: str, prompt: int, completion: int, cost: float,
                  error: ProviderError | None) -> None:
    """Once per provider call, at its end, from its usage (never per chunk)."""
    calls, tokens_in, tokens_out, spent = _call_series(provider, model)
    calls.inc()
    tokens_in.inc(prompt)
    tokens_out.inc(completion)
    spent.inc(cost)
    if error is not None:
        metrics.PROVIDER_ERRORS.labels(provider=provider, model=model, code=error.code).inc()


class AttemptRouter:
    def __init__(self, *, task_id: str, decision: RoutingDecision, budget: BudgetContext,
                 base_messages: int, tools: list[dict[str, Any]] | None = None) -> None:
        self.task_id, self.decision, self.budget = task_id, decision, budget
        self.queue: list[Candidate] = list(decision.options)
        self.larger = list(decision.larger)
        self.base_messages = base_messages
        self.tools = tools or None  # the schemas every call sends: prompt tokens too
        # Resolved once, here in the Celery thread: registry() fingerprints the settings and
        # 14 environment variables, which the event loop need not pay per call.
        self.registry = registry()
        # Per tokenizer: how many messages are counted, and their tokens (tool schemas
        # included), so a tool round only counts the messages it added. The routing
        # decision counted the first call's messages already.
        self.counted: dict[str, tuple[int, int]] = {
            key: (base_messages, tokens) for key, tokens in decision.prompt_counts.items()} if base_messages else {}
        # Seconds spent waiting for rate limits: they do not count against the attempt's
        # time limits (`time_limit` is run_attempt's asyncio.timeout; see _extend_limit).
        self.rate_waited_s = 0.0
        self.time_limit: Any = None
        self.tried: set[str] = set()
        self.pending: tuple[Candidate, DeploymentSpec] | None = None
        self.calls: list[dict[str, Any]] = []
        self.fallbacks: list[dict[str, Any]] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.cost_usd = 0.0
        self.usage_reported = True
        self.last: CallTarget | None = None
        self.rid = task_reservation_id(task_id)

    # --- choosing where the next call goes ------------------------------------------------
    async def _next(self) -> tuple[Candidate, DeploymentSpec, bool] | None:
        reg = self.registry
        while self.queue:
            cand = self.queue[0]
            dep = await reg.pick(cand.spec.id, cand.deployments, self.tried)
            if dep is not None:
                return cand, dep, False
            self.queue.pop(0)
        if not self.tried and self.decision.options and self.decision.options[0].deployments:
            # Every candidate is cooling down: trying the first beats failing untried.
            cand = self.decision.options[0]
            return cand, cand.deployments[0], True
        return None

    async def _prompt_tokens(self, messages: list[dict[str, Any]], spec: Any) -> int:
        """The call's prompt tokens with the model's own tokenizer where litellm has it
        locally: messages, the tool schemas sent with them, and the provider's tool prompt.
        Only messages not counted yet for that tokenizer are counted (the routing decision
        counted the first call's), in a thread when they are long: tokenizing takes
        milliseconds, and this loop carries every stream of the worker."""
        key = tokenizer_model(spec.id)
        counted, tokens = self.counted.get(key, (0, 0))
        new = messages[counted:]
        if new:
            count = partial(count_tokens, spec.id, messages=new, tools=None if counted else self.tools)
            long = sum(len(str(m.get("content") or "")) for m in new) > LONG_PROMPT_CHARS
            tokens += await asyncio.to_thread(count) if long else count()
            self.counted[key] = (len(messages), tokens)
        return request_tokens(spec.provider, tokens, tools=bool(self.tools))

    def output_cap(self, spec: Any) -> int | None:
        """A budgeted call's answer is always capped (tool rounds and fallbacks too): the
        cap is what makes its reservation an upper bound of its cost."""
        cap = self.decision.max_tokens
        if cap is None and self.budget.active:
            cap = int(settings.MAGEAGENT_ROUTING["BUDGET_MAX_OUTPUT_TOKENS"])
        return min(cap, spec.max_output_tokens) if cap else None

    def _extend_limit(self, seconds: float) -> None:
        """Push the attempt's deadline back by a rate-limit wait about to start.

        Waiting is not failing (the issue: a task over the limits waits or is delayed):
        a wait counted against TASK_SOFT_TIME_LIMIT_S would turn a long queue on a low-rpm
        deployment into a `timeout`, which is not retried. Requeueing with a countdown
        instead would go through task_requeue, which spends one of the task's attempts
        per wait, so a busy deployment could still fail it. The wait is an asyncio.sleep
        for exactly the refill time, so holding the attempt costs no polling, and a
        cancel still interrupts it."""
        self.rate_waited_s += seconds
        limit = self.time_limit
        if limit is not None and limit.when() is not None:
            limit.reschedule(limit.when() + seconds)

    async def begin_call(self, messages: list[dict[str, Any]], emit: Emit) -> CallTarget:
        if self.pending is not None:
            (cand, dep), probe = self.pending, False
            self.pending = None
        else:
            found = await self._next()
            if found is None:
                served = any(c.deployments for c in self.decision.options)
                raise ProviderError("no_deployment", "no deployment of the candidate models is available",
                                    retryable=served)
            cand, dep, probe = found
        spec = cand.spec
        prompt_tokens = await self._prompt_tokens(messages, spec)
        cap = self.output_cap(spec)
        output = cap or self.decision.estimated_output_tokens
        target = CallTarget(cand, dep, dep.runtime(), prompt_tokens, cap, probe=probe)

        async def on_wait(seconds: float) -> None:
            metrics.RATE_LIMIT_WAITS.inc()
            metrics.RATE_LIMIT_WAIT.inc(seconds)
            await emit("rate_limited", {"model": spec.id, "deployment": dep.id, "wait_s": round(seconds, 3)})

        await rate_limit_acquire(dep.id, rpm=dep.rpm, tpm=dep.tpm, tokens=prompt_tokens + output, on_wait=on_wait,
                                 before_sleep=self._extend_limit)
        if self.budget.active:
            target.reserved_usd = spec.cost_usd(prompt_tokens, output)
            try:
                await abudget_reserve(self.budget, rid=self.rid, amount_usd=target.reserved_usd)
            except BudgetExceeded as exc:
                raise ProviderError("budget_exceeded", exc.message, status=402) from exc
        self.tried.add(dep.id)
        self.last = target
        return target

    # --- after the call ---------------------------------------------------------------------
    async def end_call(self, target: CallTarget, *, usage: dict[str, Any] | None, streamed: str,
                       error: ProviderError | None = None) -> None:
        spec = target.candidate.spec
        if usage and usage.get("completion_tokens") is not None:
            prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        else:  # the stream broke (or was cancelled) before the provider reported usage
            self.usage_reported = False
            prompt = target.prompt_tokens if (streamed or error is None) else 0
            completion = count_tokens(spec.id, text=streamed) if streamed else 0
        cost = spec.cost_usd(prompt, completion)
        _observe_call(spec.provider, spec.id, prompt, completion, cost, error)
        self.usage["prompt_tokens"] += prompt
        self.usage["completion_tokens"] += completion
        self.cost_usd += cost
        self.calls.append({"model": spec.id, "deployment": target.deployment.id, "prompt_tokens": prompt,
                           "completion_tokens": completion, "cost_usd": round(cost, 10),
                           "error": error.code if error else None})
        if self.budget.active and cost > target.reserved_usd * (1 + 1e-9) + 1e-12:
            # The ledger books what was spent; a call costing more than it reserved means the
            # estimate is wrong somewhere (a tokenizer far off, a cap the provider ignored).
            logger.warning("task %s: call to %s cost $%.8f, over its reservation of $%.8f", self.task_id,
                           spec.id, cost, target.reserved_usd)
        try:
            if self.budget.active:
                await abudget_settle(self.budget, rid=self.rid, actual_usd=cost)
            estimate = target.prompt_tokens + (target.max_tokens or self.decision.estimated_output_tokens)
            await rate_limit_adjust(target.deployment.id, tpm=target.deployment.tpm,
                                    tokens=prompt + completion - estimate)
        except Exception:
            logger.exception("could not settle the budget or rate limit of task %s", self.task_id)
        if error is not None:
            self.registry.report_failure(target.deployment, error)
        else:
            # `tried` steers one call's fallbacks; the next call (a tool round) may go back
            # to the deployment that just answered, the only one of an explicit model.
            self.tried.clear()

    async def fallback(self, error: ProviderError) -> dict[str, Any] | None:
        """Where the attempt goes after `error`, as the `fallback` event's detail; None
        when the error ends the attempt (it is not a provider fault, or nothing is left)."""
        current = self.last
        if current is None:
            return None
        if error.code == "context_window_exceeded":
            window = current.candidate.spec.context_window
            self.queue = [c for c in self.larger if c.spec.context_window > window]
            reason = "context window exceeded: rerouted to a larger-context model"
        elif error.retryable or error.code == "provider_auth_error":
            reason = "provider error: next deployment or candidate"
        else:
            return None
        found = await self._next()
        if found is None or found[2]:
            return None
        cand, dep, _ = found
        self.pending = (cand, dep)
        detail = {"from": current.model, "from_deployment": current.deployment.id, "to": cand.spec.id,
                  "to_deployment": dep.id, "error": error.code, "status": error.status, "reason": reason}
        self.fallbacks.append(detail)
        metrics.FALLBACKS.labels(code=error.code).inc()
        return detail

    async def close(self) -> None:
        """Give back a reservation no call settled (the attempt stopped between calls)."""
        if self.budget.active:
            try:
                await abudget_settle(self.budget, rid=self.rid, actual_usd=0.0)
            except Exception:
                logger.exception("could not release the budget reservation of task %s", self.task_id)

    # --- the record -------------------------------------------------------------------------
    @property
    def model_label(self) -> str:
        spec = (self.last.candidate.spec if self.last else self.decision.options[0].spec)
        name = spec.id.split("/", 1)[1] if spec.id.startswith(f"{spec.provider}/") else spec.id
        return f"{spec.provider}/{name}"

    def record(self) -> dict[str, Any]:
        return {"model_used": self.last.model if self.last else None,
                "provider_used": self.last.candidate.spec.provider if self.last else None,
                "actual_usage": dict(self.usage),
                "actual_cost_usd": round(self.cost_usd, 10), "usage_reported": self.usage_reported,
                "fallbacks": list(self.fallbacks), "calls": list(self.calls)}
