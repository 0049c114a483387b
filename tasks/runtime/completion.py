"""A whole answer from a model routed as a task's would be: what a tool that asks a model
gets as its ToolContext.complete (file_processing's summaries)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from providers.llm import stream_chat
from routing.services import RoutingDecision, model_select
from tools.registry import Complete


def _select_model(prompt: str, model: str | None, company_id: int | None) -> RoutingDecision:
    try:
        return model_select(prompt=prompt, model=model, tools=[], company_id=company_id)
    finally:
        close_old_connections()  # a thread of its own: its connection goes with it


def routed_complete(company_id: int | None) -> Complete:
    async def complete(messages: list[dict[str, Any]], model: str | None) -> str:
        prompt = str(messages[-1]["content"])
        decision = await sync_to_async(_select_model, thread_sensitive=False)(prompt, model, company_id)
        assert decision.deployment is not None
        parts: list[str] = []
        async for delta in stream_chat(decision.deployment, messages):
            if delta.content:
                parts.append(delta.content)
        return "".join(parts)

    return complete
