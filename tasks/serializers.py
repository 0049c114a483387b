from __future__ import annotations

from typing import Any

import orjson
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from mageagent.pagination import PageQuerySerializer
from mageagent.serializers import (
    SharedFieldsMixin,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
)
from providers.conversation import conversation_chars, conversation_from
from routing.selectors import CHARS_PER_TOKEN, largest_context_window, max_prompt_chars

from .events import MAX_POSITION
from .models import Task, TaskStatus
from .progress import task_progress


class TaskContextSerializer(StrictSerializer):
    useGraphRAG = StrictBooleanField(required=False, default=False)
    graphragQuery = StrictCharField(required=False, allow_null=True, allow_blank=True,
                                          default=None, max_length=4000)
    additionalContext = StrictCharField(required=False, allow_null=True, allow_blank=True,
                                              default=None, max_length=400_000)


ROLES = ("system", "developer", "user", "assistant", "tool")
CONTENT_PARTS = ("text", "image_url")


def _invalid(message: str) -> serializers.ValidationError:
    return serializers.ValidationError(message)


def _check_content(content: Any, where: str, *, role: str) -> None:
    if isinstance(content, str) or (content is None and role == "assistant"):
        return
    if not isinstance(content, list) or not content:
        raise _invalid(f"{where}.content must be a string or a non-empty list of content parts")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in CONTENT_PARTS:
            raise _invalid(f"{where}.content[{j}].type must be one of {', '.join(CONTENT_PARTS)}")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _invalid(f"{where}.content[{j}].text must be a string")
        if kind == "image_url" and (role != "user" or not isinstance(part.get("image_url"), dict)
                                    or not isinstance(part["image_url"].get("url"), str)):
            raise _invalid(f"{where}.content[{j}]: an image_url part (user messages only) needs image_url.url")


def _check_message(message: Any, i: int) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _invalid(f"{where} must be an object")
    role = message.get("role")
    if role not in ROLES:
        raise _invalid(f"{where}.role must be one of {', '.join(ROLES)}")
    unknown = set(message) - {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}
    if unknown:
        raise _invalid(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    _check_content(message.get("content"), where, role=role)
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _invalid(f"{where}: a tool message needs tool_call_id")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise _invalid(f"{where}.tool_calls: a list, on assistant messages only")
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not (isinstance(fn, dict) and isinstance(call.get("id"), str) and isinstance(fn.get("name"), str)
                    and isinstance(fn.get("arguments"), str)):
                raise _invalid(f"{where}.tool_calls[{j}] needs id and function.name / function.arguments (a string)")
    elif role == "assistant" and message.get("content") is None:
        raise _invalid(f"{where}: an assistant message needs content or tool_calls")


_TEXT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
              "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}
_IMAGE_PART = {"type": "object", "required": ["type", "image_url"], "properties": {
    "type": {"type": "string", "enum": ["image_url"]},
    "image_url": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}}}
_TOOL_CALL = {"type": "object", "required": ["id", "function"], "properties": {
    "id": {"type": "string"}, "type": {"type": "string", "enum": ["function"]},
    "function": {"type": "object", "required": ["name", "arguments"], "properties": {
        "name": {"type": "string"}, "arguments": {"type": "string"}}}}}


# What each message may hold, so that the schema is no looser than the checks below; the rules
# across fields (content or tool_calls on an assistant message, tool_call_id on a tool message,
# image parts from users only) are in the description: OpenAPI 3.0 cannot state them.
@extend_schema_field({
    "type": "array", "maxItems": 1000,
    "description": "OpenAI chat messages. A tool message needs `tool_call_id`; an assistant message needs "
                   "`content` or `tool_calls` (assistant messages only); `image_url` parts come from users only.",
    "items": {"type": "object", "required": ["role"], "additionalProperties": False, "properties": {
        "role": {"type": "string", "enum": list(ROLES)},
        "content": {"nullable": True, "oneOf": [
            {"type": "string"}, {"type": "array", "minItems": 1, "items": {"oneOf": [_TEXT_PART, _IMAGE_PART]}}]},
        "name": {"type": "string"}, "refusal": {"type": "string", "nullable": True},
        "tool_call_id": {"type": "string"},
        "tool_calls": {"type": "array", "items": _TOOL_CALL}}}})
class ChatMessagesField(serializers.ListField):
    """OpenAI chat messages: system/developer, user (text and image parts), assistant (with
    tool_calls), tool (tool_call_id). Checked by hand: a long conversation through nested
    DRF serializers costs a field object per message part."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.DictField(), max_length=1000, **kwargs)

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, list):
            self.fail("not_a_list", input_type=type(data).__name__)
        if len(data) > 1000:
            raise _invalid("at most 1000 messages")
        for i, message in enumerate(data):
            _check_message(message, i)
        return data


_FORMAT_TYPE = {"type": "object", "required": ["type"]}


@extend_schema_field({"oneOf": [
    {**_FORMAT_TYPE, "properties": {"type": {"type": "string", "enum": ["text", "json_object"]}}},
    {**_FORMAT_TYPE, "required": ["type", "json_schema"], "properties": {
        "type": {"type": "string", "enum": ["json_schema"]},
        "json_schema": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "schema": {"type": "object"}}}}},
]})
class ResponseFormatField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise _invalid("must be {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...}")
        if kind == "json_schema":
            spec = data.get("json_schema")
            if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
                    and isinstance(spec.get("schema", {}), dict)):
                raise _invalid("json_schema needs {\"name\": ..., \"schema\": {...}}")
        return data


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                       "minItems": 1, "maxItems": 4}]})
class StopField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) or (isinstance(data, list) and 0 < len(data) <= 4
                                     and all(isinstance(x, str) for x in data)):
            return data
        raise _invalid("must be a string or a list of at most 4 strings")


class TaskInputSerializer(StrictSerializer):
    """A task to run: `prompt`, or `messages` holding a user message, or both (the prompt is then
    the conversation's last user message). Unknown fields are refused."""

    prompt = StrictCharField(required=False, trim_whitespace=False)
    messages = ChatMessagesField(required=False)
    system = StrictCharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False, default=None)
    model = StrictCharField(required=False, allow_null=True, default=None, max_length=200)
    context = TaskContextSerializer(required=False)  # type: ignore[assignment]  # a declared field, not .context
    tools = serializers.ListField(child=StrictCharField(max_length=100), required=False,
                                  default=list, max_length=32)
    stream = StrictBooleanField(required=False, default=True)
    metadata = serializers.DictField(required=False, default=dict)
    priority = StrictIntegerField(required=False, default=0, min_value=0, max_value=9)
    temperature = StrictFloatField(required=False, allow_null=True, default=None, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, default=None, min_value=0, max_value=1)
    max_tokens = StrictIntegerField(required=False, allow_null=True, default=None, min_value=1,
                                    max_value=10_000_000)
    stop = StopField(required=False, allow_null=True, default=None)
    seed = StrictIntegerField(required=False, allow_null=True, default=None, min_value=-(2**63),
                              max_value=2**63 - 1)
    response_format = ResponseFormatField(required=False, allow_null=True, default=None)

    def validate_tools(self, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("must not repeat a tool")
        return value

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(orjson.dumps(value)) > 16_384:
            raise serializers.ValidationError("must serialize to at most 16 KiB of JSON")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        prompt, messages = attrs.get("prompt"), attrs.pop("messages", None)
        if prompt is not None and not prompt.strip():
            raise serializers.ValidationError({"prompt": ["must not be blank"]})
        if prompt is None and not messages:
            raise serializers.ValidationError({"prompt": ["give a prompt, messages, or both"]})
        if messages and not prompt and not any(m["role"] == "user" for m in messages):
            raise serializers.ValidationError({"messages": ["must hold a user message"]})
        attrs["prompt"], attrs["messages"] = conversation_from(prompt=prompt, messages=messages)
        prompt_limit_check(prompt=attrs["prompt"], messages=attrs["messages"], system=attrs.get("system"))
        if attrs.get("response_format") == {"type": "text"}:
            attrs["response_format"] = None  # the default: not a parameter worth sending
        return attrs


def prompt_limit_check(*, prompt: str, messages: list[dict[str, Any]], system: str | None) -> None:
    """The conversation fits the largest enabled model (routing then picks one it fits)."""
    chars = conversation_chars(prompt=prompt, messages=messages, system=system)
    if chars > (limit := max_prompt_chars()):
        field = "messages" if messages else "prompt"
        window = largest_context_window()
        raise serializers.ValidationError({field: [
            f"is longer than {limit} characters, what the largest enabled model's context window "
            f"({window} tokens) holds at about {CHARS_PER_TOKEN} characters a token"]})


class TaskListFilterSerializer(PageQuerySerializer):
    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    model = serializers.CharField(required=False)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)


class EventsQuerySerializer(StrictSerializer):
    after = serializers.IntegerField(required=False, default=0, min_value=0, max_value=MAX_POSITION,
                                     help_text="return the events with seq > after")
    token = serializers.CharField(required=False)


class TaskProgressSerializer(serializers.Serializer):
    tokens = serializers.IntegerField(help_text="answer tokens streamed so far (the final count once finished)")
    expected_tokens = serializers.IntegerField(allow_null=True, help_text="what the answer is expected to take; "
                                               "null until the task is routed")


def _nullable(text: str, **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "nullable": True, "description": text, "properties": properties}


_STR, _NULLABLE_STR = {"type": "string"}, {"type": "string", "nullable": True}
_NUMBER, _INT = {"type": "number", "nullable": True}, {"type": "integer", "nullable": True}


@extend_schema_field(_nullable(
    "the answer: null until completed (a cancelled task keeps its partial content)",
    content=_STR, model={**_STR, "description": "provider/name"}, tokensUsed=_INT, finishReason=_NULLABLE_STR,
    usage={"type": "object", "nullable": True, "properties": {"prompt_tokens": _INT, "completion_tokens": _INT}},
    cost_usd=_NUMBER))
class _ResultField(serializers.JSONField):
    pass


@extend_schema_field(_nullable("null unless failed", code=_STR, message=_STR))
class _ErrorField(serializers.JSONField):
    pass


@extend_schema_field(_nullable("the routing decision; null until routed", model=_STR, provider=_STR, reason=_STR,
                               candidates={"type": "array", "items": _STR}))
class _RoutingField(serializers.JSONField):
    pass


class _TaskFields(serializers.ModelSerializer):
    taskId = serializers.UUIDField(source="id")
    company_id = serializers.CharField(source="company.slug")
    app_id = serializers.CharField(source="app.slug")
    context = serializers.SerializerMethodField()  # type: ignore[assignment]  # a declared field, not .context
    priority = serializers.IntegerField(min_value=0, max_value=9, help_text="0-9, higher first")
    result = _ResultField()
    error = _ErrorField()
    routing = _RoutingField()
    steps = serializers.ListField(child=serializers.CharField())
    tools = serializers.ListField(child=serializers.CharField())
    metadata = serializers.DictField()
    messages = serializers.ListField(child=serializers.DictField())
    stop = serializers.JSONField()
    response_format = serializers.JSONField()
    progress = serializers.SerializerMethodField()
    estimated_duration_ms = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = ("id", "taskId", "company_id", "app_id", "status", "prompt", "messages", "system", "model",
                  "context", "tools", "stream", "metadata", "priority", "temperature", "top_p", "max_tokens",
                  "stop", "seed", "response_format", "result", "error", "routing", "steps",
                  "attempts", "created_at", "started_at", "completed_at", "estimated_duration_ms", "progress")

    def to_representation(self, instance: Task) -> dict[str, Any]:
        data = dict(super().to_representation(instance))
        # One computation (Redis reads only while the task runs) fills both fields.
        data["progress"], data["estimated_duration_ms"] = task_progress(instance)
        return data

    @extend_schema_field(TaskProgressSerializer)
    def get_progress(self, task: Task) -> None:
        return None  # filled by to_representation

    @extend_schema_field(serializers.IntegerField(allow_null=True, help_text=(
        "creation to completion: an estimate from the routed model's measured speed, revised as the task "
        "runs; what it took once finished")))
    def get_estimated_duration_ms(self, task: Task) -> None:
        return None  # filled by to_representation

    @extend_schema_field(TaskContextSerializer)
    def get_context(self, task: Task) -> dict[str, Any]:
        return {"useGraphRAG": False, "graphragQuery": None, "additionalContext": None,
                **(task.context or {})}


class TaskOutputSerializer(SharedFieldsMixin, _TaskFields):
    """A task: its inputs, status, result or error, and routing decision."""
