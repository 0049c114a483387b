"""Translation between OpenAI's shapes and tasks: a request becomes task_submit's fields,
a task becomes a chat.completion or a response object. Every request is a Task, so
tenancy, budgets, rate limits, routing, retries and fallbacks apply as on the native API."""

from __future__ import annotations

import uuid
from typing import Any

from mageagent.errors import NotFound, ValidationFailed
from mageagent.tenancy.auth import Tenant
from providers.conversation import conversation_from
from routing.selectors import model_list
from tasks import selectors
from tasks.models import Task, TaskStatus
from tasks.serializers import ChatMessagesField, prompt_limit_check

AUTO = "auto"
# Where a task made here keeps what its Task fields do not hold (the endpoint, the
# Responses-only fields); left out of the metadata shown to OpenAI clients.
META_KEY = "_openai"
RESPONSE_STATUS: dict[str, str] = {TaskStatus.QUEUED: "queued", TaskStatus.PROCESSING: "in_progress",
                   TaskStatus.COMPLETED: "completed", TaskStatus.FAILED: "failed",
                   TaskStatus.CANCELLED: "cancelled"}


# --- ids -------------------------------------------------------------------------------------
def response_id(task: Task) -> str:
    return f"resp_{task.id.hex}"


def completion_id(task: Task) -> str:
    return f"chatcmpl-{task.id.hex}"


def message_item_id(task: Task | str, index: int = 0) -> str:
    hex_id = task if isinstance(task, str) else task.id.hex
    return f"msg_{hex_id}" if index == 0 else f"msg_{hex_id}_{index}"


def task_id_from(raw: str, prefix: str) -> str:
    """The task id in an OpenAI-style id (`resp_<hex>`); NotFound when it is not one."""
    try:
        return str(uuid.UUID(hex=raw.removeprefix(prefix)))
    except ValueError:
        raise NotFound(f"no such object: {raw}") from None


def response_task(*, tenant: Tenant, raw_id: str) -> Task:
    return selectors.task_get(tenant=tenant, task_id=task_id_from(raw_id, "resp_"))


# --- models ----------------------------------------------------------------------------------
def models_openai(*, tenant: Tenant) -> dict[str, Any]:
    data = [{"id": AUTO, "object": "model", "created": 0, "owned_by": "mageagent"}]
    data += [{"id": m["id"], "object": "model", "created": 0, "owned_by": m["provider"]}
             for m in model_list(company_id=tenant.company_id)]
    return {"object": "list", "data": data}


# --- requests -> task fields -----------------------------------------------------------------
def _model(model: str | None) -> str | None:
    return None if not model or model == AUTO else model


def _tool_choice_chat(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        return {"type": "function", "function": {"name": choice.get("name")}}  # the Responses shape
    return choice


def _conversation(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """prompt/messages/system for a task: OpenAI has no hidden system prompt, so a
    conversation without one gets none (system "")."""
    prompt, messages = conversation_from(prompt=None, messages=messages)
    has_system = any(m["role"] in ("system", "developer") for m in messages)
    messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    return {"prompt": prompt, "messages": messages, "system": None if has_system else ""}


def _metadata(metadata: dict[str, Any] | None, user: str | None, **openai: Any) -> dict[str, Any]:
    info = {k: v for k, v in openai.items() if v is not None}
    if user:
        info["user"] = user
    return {**(metadata or {}), META_KEY: info}


def chat_task_fields(data: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/chat/completions's body as task_submit's fields."""
    fields = _conversation(data["messages"])
    fields.update(
        model=_model(data["model"]), tools=data.get("mageagent_tools") or [], stream=data.get("stream", False),
        metadata=_metadata(data.get("metadata"), data.get("user"), endpoint="chat.completions"),
        temperature=data.get("temperature"), top_p=data.get("top_p"),
        max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"), stop=data.get("stop"),
        seed=data.get("seed"), response_format=data.get("response_format"),
        client_tools=data.get("tools") or [], tool_choice=_tool_choice_chat(data.get("tool_choice")))
    prompt_limit_check(prompt=fields["prompt"], messages=fields["messages"], system=fields["system"])
    return fields


def _content_parts(content: Any, role: str) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text")})
        elif kind == "input_image" and role == "user":
            url = part.get("image_url") or part.get("file_id")
            parts.append({"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}})
        else:
            raise ValidationFailed(f"input content part of type {kind!r} is not supported", details={"input": kind})
    return parts


def response_input_messages(items: Any) -> list[dict[str, Any]]:
    """Responses `input` (a string or items) as chat messages: message items, function
    calls (an assistant message's tool_calls) and their outputs (tool messages)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ValidationFailed(f"input message role {role!r} is not supported", details={"input": role})
            messages.append({"role": role, "content": _content_parts(item.get("content"), role)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": output if isinstance(output, str) else str(output)})
        else:
            raise ValidationFailed(f"input item of type {kind!r} is not supported", details={"input": kind})
    return messages


def _assistant_turn(task: Task) -> dict[str, Any] | None:
    result = task.result or {}
    calls = result.get("tool_calls")
    if not result.get("content") and not calls:
        return None
    turn: dict[str, Any] = {"role": "assistant", "content": result.get("content") or None}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _previous_conversation(*, tenant: Tenant, previous_id: str) -> list[dict[str, Any]]:
    """The conversation a stored response ended with: its messages and its answer."""
    previous = response_task(tenant=tenant, raw_id=previous_id)
    if previous.status != TaskStatus.COMPLETED:
        raise ValidationFailed(f"previous response {previous_id} is {RESPONSE_STATUS[previous.status]}, "
                               "not completed", details={"previous_response_id": previous_id})
    messages = list(previous.messages) or [{"role": "user", "content": previous.prompt}]
    turn = _assistant_turn(previous)
    return [*messages, *([turn] if turn else [])]


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                       if k in fmt}}
    raise ValidationFailed(f"text.format type {fmt.get('type')!r} is not supported", details={"text": fmt})


def response_task_fields(data: dict[str, Any], *, tenant: Tenant) -> dict[str, Any]:
    """POST /v1/responses's body as task_submit's fields."""
    messages = response_input_messages(data["input"])
    if data.get("previous_response_id"):
        messages = [*_previous_conversation(tenant=tenant, previous_id=data["previous_response_id"]), *messages]
    ChatMessagesField().to_internal_value(messages)  # what the items became must be a valid conversation
    if not any(m["role"] == "user" for m in messages):
        raise ValidationFailed("input must hold a user message", details={"input": "no user message"})
    instructions = data.get("instructions")
    fields = _conversation(messages)
    if instructions:
        fields["system"] = instructions
    tools = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters", "strict")
                                               if k in t}} for t in data.get("tools") or []]
    fields.update(
        model=_model(data.get("model")), tools=data.get("mageagent_tools") or [], stream=bool(data.get("stream")),
        metadata=_metadata(data.get("metadata"), data.get("user"), endpoint="responses",
                           background=bool(data.get("background")),
                           previous_response_id=data.get("previous_response_id"), instructions=instructions),
        temperature=data.get("temperature"), top_p=data.get("top_p"), max_tokens=data.get("max_output_tokens"),
        response_format=_response_format(data.get("text")), client_tools=tools,
        tool_choice=_tool_choice_chat(data.get("tool_choice")))
    prompt_limit_check(prompt=fields["prompt"], messages=fields["messages"], system=fields["system"])
    return fields


# --- tasks -> OpenAI objects ------------------------------------------------------------------
def served_model(task: Task) -> str:
    return (task.routing or {}).get("model") or task.model or AUTO


def openai_usage(result: dict[str, Any] | None) -> dict[str, int] | None:
    usage = (result or {}).get("usage")
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(task: Task) -> dict[str, Any]:
    result = task.result or {}
    message: dict[str, Any] = {"role": "assistant", "content": result.get("content") or None, "refusal": None}
    if result.get("tool_calls"):
        message["tool_calls"] = result["tool_calls"]
    elif message["content"] is None:
        message["content"] = ""
    finish = result.get("finishReason") or "stop"
    return {"id": completion_id(task), "object": "chat.completion", "created": int(task.created_at.timestamp()),
            "model": served_model(task), "system_fingerprint": None, "service_tier": "default",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish if finish in ("stop", "length", "tool_calls", "content_filter")
                         else "stop"}],
            "usage": openai_usage(result)}


def response_usage(result: dict[str, Any] | None) -> dict[str, Any] | None:
    usage = openai_usage(result)
    if usage is None:
        return None
    return {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if text
            or status == "completed" else []}


def function_call_item(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or call
    return {"type": "function_call", "id": f"fc_{call['id']}", "call_id": call["id"], "name": fn["name"],
            "arguments": fn["arguments"], "status": "completed"}


def response_output(task: Task, result: dict[str, Any] | None, *,
                    message_id: str | None = None) -> list[dict[str, Any]]:
    result = result or {}
    output: list[dict[str, Any]] = []
    content = result.get("content") or ""
    if content or not result.get("tool_calls"):
        status = "completed" if task.status == TaskStatus.COMPLETED else "incomplete"
        if content or task.status == TaskStatus.COMPLETED:
            output.append(message_item(message_id or message_item_id(task), content, status))
    output += [function_call_item(c) for c in result.get("tool_calls") or []]
    return output


def response_object(task: Task, *, status: str | None = None, result: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None, message_id: str | None = None,
                    final: bool = True) -> dict[str, Any]:
    """The response object of a task, from its row, or (in a stream) from the state the
    event log had reached: `status`, `result`, `error` override the row's."""
    info = (task.metadata or {}).get(META_KEY) or {}
    status = status or RESPONSE_STATUS[task.status]
    result = result if result is not None else (task.result if final else None)
    error = error if error is not None else (task.error if final else None)
    tools = [{"type": "function", "name": t["function"]["name"], "description": t["function"].get("description"),
              "parameters": t["function"].get("parameters"), "strict": t["function"].get("strict")}
             for t in task.client_tools or []]
    fmt: dict[str, Any] = {"type": "text"}
    if task.response_format and task.response_format.get("type") == "json_schema":
        fmt = {"type": "json_schema", **task.response_format.get("json_schema", {})}
    elif task.response_format:
        fmt = {"type": task.response_format["type"]}
    return {
        "id": response_id(task), "object": "response", "created_at": int(task.created_at.timestamp()),
        "status": status, "background": bool(info.get("background")), "model": served_model(task),
        "output": response_output(task, result, message_id=message_id) if result else [],
        "instructions": info.get("instructions"), "metadata": {k: v for k, v in (task.metadata or {}).items()
                                                               if k != META_KEY},
        "previous_response_id": info.get("previous_response_id"), "max_output_tokens": task.max_tokens,
        "temperature": task.temperature, "top_p": task.top_p, "tools": tools,
        "tool_choice": task.tool_choice or "auto", "parallel_tool_calls": True, "text": {"format": fmt},
        "truncation": "disabled", "user": info.get("user"), "usage": response_usage(result) if final else None,
        "error": {"code": str(error.get("code") or "server_error"), "message": str(error.get("message") or "")}
        if error else None,
        "incomplete_details": None, "reasoning": None, "store": True,
        "completed_at": int(task.completed_at.timestamp()) if task.completed_at and final else None,
    }
