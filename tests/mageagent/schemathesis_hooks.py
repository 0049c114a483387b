"""Schemathesis hooks for tests/mageagent/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS):
the rules of valid input that an OpenAPI schema cannot state, applied to the generated requests so
that the fuzzer tests everything else."""

from __future__ import annotations

from typing import Any

import schemathesis

# A task's `model` must name a model of the catalog (GET /models), which no schema lists.
CATALOG_MODEL = "gpt-4o-mini"
KNOWN_MODELS = {CATALOG_MODEL, "gpt-4.1-mini"}
# The operations whose body is a task's (TaskInput).
TASK_BODIES = {"/mageagent/api/v1/tasks", "/mageagent/api/v1/route"}
# OpenAI's: a chat needs a user message, and so does a response's `input` (list) (their
# descriptions say so; OpenAPI 3.0 has no `contains`).
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
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
        # A usage period starts no later than it ends (two parameters: no schema can say so).
        start, end = case.query.get("from"), case.query.get("to")
        if case.operation.path.endswith("/usage") and isinstance(start, str) and isinstance(end, str) \
                and len(start) == len(end) == 10 and start > end:
            case.query["from"], case.query["to"] = end, start
    body = case.body
    if not isinstance(body, dict):
        return
    # A task needs a prompt or a user message (TaskInput's description says so; OpenAPI 3.0 cannot),
    # and chat messages follow OpenAI's rules per role, which the schema leaves to the description:
    # a request meant to be valid gets a valid conversation.
    messages = body.get("messages")
    # (Only a list of objects, what the schema documents: any other value is a negative case.)
    schema_valid = isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
    if case.operation.path == CHAT and schema_valid:
        body["messages"] = messages = [{"role": "user", "content": "hello"}]
    if case.operation.path == RESPONSES and isinstance(body.get("input"), list) and body["input"] \
            and all(isinstance(item, dict) for item in body["input"]):
        body["input"] = [{"role": "user", "content": "hello"}]
    if case.operation.path in TASK_BODIES and schema_valid:
        body["messages"] = messages = [{"role": "user", "content": "hello"}] if messages else []
    has_user_message = isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("role") == "user" for m in messages)
    if case.operation.path in TASK_BODIES and "prompt" not in body and not has_user_message:
        body["prompt"] = "hello"
    if isinstance(body.get("model"), str) and body["model"] not in KNOWN_MODELS:
        body["model"] = CATALOG_MODEL
    if isinstance(body.get("mageagent_tools"), list):  # /v1's name for a task's `tools`
        body["mageagent_tools"] = [name for name in body["mageagent_tools"]
                                   if not isinstance(name, str) or name in AVAILABLE_TOOLS]
    if isinstance(body.get("tools"), list):
        body["tools"] = [name for name in body["tools"] if not isinstance(name, str) or name in AVAILABLE_TOOLS]
