"""Schemathesis hooks for tests/mageagent/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS):
the rules of valid input that an OpenAPI schema cannot state, applied to the generated requests so
that the fuzzer tests everything else."""

from __future__ import annotations

from typing import Any

import schemathesis

# A task's `model` must name a model of the catalog (GET /models), which no schema lists.
CATALOG_MODEL = "gpt-4o-mini"
KNOWN_MODELS = {CATALOG_MODEL, "gpt-4.1-mini"}
# `tools` must name tools of GET /tools that are available here (no web search provider in tests).
AVAILABLE_TOOLS = {"code_execution", "file_processing", "graphrag_search"}


def _without_nul(value: Any) -> Any:
    # No string of the API may hold NUL (DRF's CharField refuses it; PostgreSQL cannot store it).
    # "0" keeps the string's length, so its other constraints hold as generated.
    if isinstance(value, str):
        return value.replace("\x00", "0")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if isinstance(case.body, (dict, list, str)):
        case.body = _without_nul(case.body)
    if case.query:
        case.query = _without_nul(case.query)
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str) and body["model"] not in KNOWN_MODELS:
        body["model"] = CATALOG_MODEL
    if isinstance(body.get("tools"), list):
        body["tools"] = [name for name in body["tools"] if not isinstance(name, str) or name in AVAILABLE_TOOLS]
