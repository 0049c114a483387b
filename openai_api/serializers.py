"""Request bodies of /v1, as OpenAI documents them (the fields MageAgent serves; any other
field is a 400 naming it, as OpenAI answers an unknown parameter)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from mageagent.serializers import StrictCharField, StrictSerializer
from tasks.serializers import ChatMessagesField, ResponseFormatField, StopField


def _function_spec(spec: Any, where: str) -> None:
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]):
        raise serializers.ValidationError(f"{where} needs a name")
    if not isinstance(spec.get("parameters", {}), dict):
        raise serializers.ValidationError(f"{where}.parameters must be a JSON schema object")


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


class ChatToolsField(_FunctionToolsField):
    """OpenAI chat tools: `{"type": "function", "function": {"name", "description", "parameters"}}`."""


class ResponseToolsField(_FunctionToolsField):
    """Responses API tools: `{"type": "function", "name", "description", "parameters", "strict"}`."""

    nested = False


class OpenAIMetadataField(serializers.DictField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=StrictCharField(max_length=512, allow_blank=True), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, str]:
        value = super().to_internal_value(data)
        if len(value) > 16 or any(len(k) > 64 for k in value):
            raise serializers.ValidationError("at most 16 keys of at most 64 characters")
        return dict(value)


class StreamOptionsSerializer(StrictSerializer):
    include_usage = serializers.BooleanField(required=False, default=False)
    include_obfuscation = serializers.BooleanField(required=False, default=False)


class _Sampling(StrictSerializer):
    model = StrictCharField(max_length=200)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    tool_choice = serializers.JSONField(required=False, allow_null=True)
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)
    stream = serializers.BooleanField(required=False, default=False)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    metadata = OpenAIMetadataField(required=False, allow_null=True)
    store = serializers.BooleanField(required=False, allow_null=True)
    # The platform's own tools (GET /mageagent/api/v1/tools), which it runs itself.
    mageagent_tools = serializers.ListField(child=StrictCharField(max_length=100), required=False, max_length=32)

    def validate_tool_choice(self, value: Any) -> Any:
        if value is None or value in ("auto", "none", "required") or isinstance(value, dict):
            return value
        raise serializers.ValidationError('must be "auto", "none", "required" or a function choice')


class ChatCompletionInputSerializer(_Sampling):
    messages = ChatMessagesField()
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    stop = StopField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True)
    response_format = ResponseFormatField(required=False, allow_null=True)
    tools = ChatToolsField(required=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    n = serializers.IntegerField(required=False, min_value=1, max_value=1)

    def validate_messages(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not any(m["role"] == "user" for m in value):
            raise serializers.ValidationError("must hold a user message")
        return value


class ResponseCreateInputSerializer(_Sampling):
    model = StrictCharField(max_length=200, required=False, default="auto")
    input = serializers.JSONField()
    instructions = StrictCharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False)
    max_output_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    tools = ResponseToolsField(required=False)
    previous_response_id = StrictCharField(required=False, allow_null=True, max_length=100)
    background = serializers.BooleanField(required=False, default=False)
    text = serializers.DictField(required=False, allow_null=True)
    truncation = serializers.ChoiceField(choices=["auto", "disabled"], required=False, allow_null=True)

    def validate_input(self, value: Any) -> Any:
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            return value
        raise serializers.ValidationError("must be a non-empty string or a list of input items")


class ResponseStreamQuerySerializer(StrictSerializer):
    stream = serializers.BooleanField(required=False, default=False)
    starting_after = serializers.IntegerField(required=False, default=-1, min_value=-1)
    include = serializers.ListField(child=serializers.CharField(), required=False)
    include_obfuscation = serializers.BooleanField(required=False)
