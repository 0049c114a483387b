"""Request bodies of /v1, as OpenAI documents them (the fields MageAgent serves; any other
field is a 400 naming it, as OpenAI answers an unknown parameter)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from mageagent.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
)
from tasks.serializers import ChatMessagesField, ResponseFormatField, StopField


def _function_spec(spec: Any, where: str) -> None:
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]):
        raise serializers.ValidationError(f"{where} needs a name")
    if not isinstance(spec.get("parameters", {}), dict):
        raise serializers.ValidationError(f"{where}.parameters must be a JSON schema object")


# As a task's (tasks/serializers.py): a task's limits hold for every entry point.
MAX_TOKENS = 10_000_000

_PARAMETERS = {"type": "object", "description": "a JSON schema of the function's arguments"}
_FUNCTION: dict[str, Any] = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "minLength": 1}, "description": {"type": "string"}, "parameters": _PARAMETERS}}


class _FunctionToolsField(serializers.ListField):
    """Function tools; each names its function and gives its parameters as a JSON schema object."""

    nested = True  # the function's fields under "function" (chat), or in the tool itself (responses)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.DictField(), max_length=128, **kwargs)

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        tools = super().to_internal_value(data)
        for i, tool in enumerate(tools):
            if tool.get("type") != "function":
                raise serializers.ValidationError(f"tools[{i}].type: only function tools are supported "
                                                  "(the platform's tools: mageagent_tools)")
            if self.nested:
                _function_spec(tool.get("function"), f"tools[{i}].function")
            else:
                _function_spec(tool, f"tools[{i}]")
        return tools


@extend_schema_field({"type": "array", "maxItems": 128, "items": {
    "type": "object", "required": ["type", "function"], "properties": {
        "type": {"type": "string", "enum": ["function"]}, "function": _FUNCTION}}})
class ChatToolsField(_FunctionToolsField):
    """OpenAI chat tools: `{"type": "function", "function": {"name", "description", "parameters"}}`."""


@extend_schema_field({"type": "array", "maxItems": 128, "items": {
    **_FUNCTION, "required": ["type", "name"],
    "properties": {**_FUNCTION["properties"], "type": {"type": "string", "enum": ["function"]},
                   "strict": {"type": "boolean", "nullable": True}}}})
class ResponseToolsField(_FunctionToolsField):
    """Responses API tools: `{"type": "function", "name", "description", "parameters", "strict"}`."""

    nested = False


@extend_schema_field({
    "description": "a non-empty string (one user message) or a list of input items: messages "
                   "(`role` user, assistant, system or developer), `function_call` and `function_call_output`; "
                   "it must hold a user message",
    "oneOf": [{"type": "string", "pattern": r"\S"},
              {"type": "array", "minItems": 1, "items": {"type": "object"}}]})
class ResponseInputField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and data.strip():
            return data
        if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
            return data
        raise serializers.ValidationError("must be a non-empty string or a list of input items")


class OpenAIMetadataField(serializers.DictField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=StrictCharField(max_length=512, allow_blank=True), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, str]:
        value = super().to_internal_value(data)
        if len(value) > 16 or any(len(k) > 64 for k in value):
            raise serializers.ValidationError("at most 16 keys of at most 64 characters")
        return dict(value)


@extend_schema_field({"oneOf": [{"type": "string", "enum": ["auto", "none", "required"]},
                               {"type": "object", "description": "a function choice"}]})
class ToolChoiceField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        if data in ("auto", "none", "required") or isinstance(data, dict):
            return data
        raise serializers.ValidationError('must be "auto", "none", "required" or a function choice')


class StreamOptionsSerializer(StrictSerializer):
    include_usage = StrictBooleanField(required=False, default=False)
    include_obfuscation = StrictBooleanField(required=False, default=False)


class _Sampling(StrictSerializer):
    model = StrictCharField(max_length=200)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    tool_choice = ToolChoiceField(required=False, allow_null=True)
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True)
    stream = StrictBooleanField(required=False, default=False)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    metadata = OpenAIMetadataField(required=False, allow_null=True)
    store = StrictBooleanField(required=False, allow_null=True)
    # The platform's own tools (GET /mageagent/api/v1/tools), which it runs itself.
    mageagent_tools = serializers.ListField(child=StrictCharField(max_length=100), required=False, max_length=32)


class ChatCompletionInputSerializer(_Sampling):
    messages = ChatMessagesField()
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_TOKENS)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_TOKENS)
    stop = StopField(required=False, allow_null=True)
    seed = StrictIntegerField(required=False, allow_null=True, min_value=-(2**63), max_value=2**63 - 1)
    response_format = ResponseFormatField(required=False, allow_null=True)
    tools = ChatToolsField(required=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    n = StrictIntegerField(required=False, min_value=1, max_value=1)

    def validate_messages(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not any(m["role"] == "user" for m in value):
            raise serializers.ValidationError("must hold a user message")
        return value


class ResponseCreateInputSerializer(_Sampling):
    model = StrictCharField(max_length=200, required=False, default="auto")
    input = ResponseInputField()
    instructions = StrictCharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False)
    max_output_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_TOKENS)
    tools = ResponseToolsField(required=False)
    previous_response_id = StrictCharField(required=False, allow_null=True, max_length=100)
    background = StrictBooleanField(required=False, default=False)
    text = serializers.DictField(required=False, allow_null=True)
    truncation = serializers.ChoiceField(choices=["auto", "disabled"], required=False, allow_null=True)


class ResponseStreamQuerySerializer(StrictSerializer):
    stream = serializers.BooleanField(required=False, default=False)
    starting_after = serializers.IntegerField(required=False, default=-1, min_value=-1)
    include = serializers.ListField(child=serializers.CharField(), required=False)
    include_obfuscation = serializers.BooleanField(required=False)
