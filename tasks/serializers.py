from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from mageagent.serializers import SharedFieldsMixin, StrictCharField, StrictSerializer

from .models import Task, TaskStatus


class TaskContextSerializer(StrictSerializer):
    useGraphRAG = serializers.BooleanField(required=False, default=False)
    graphragQuery = StrictCharField(required=False, allow_null=True, allow_blank=True,
                                          default=None, max_length=4000)
    additionalContext = StrictCharField(required=False, allow_null=True, allow_blank=True,
                                              default=None, max_length=400_000)


class TaskInputSerializer(StrictSerializer):
    prompt = StrictCharField(trim_whitespace=False)
    model = StrictCharField(required=False, allow_null=True, default=None, max_length=200)
    context = TaskContextSerializer(required=False)  # type: ignore[assignment]  # a declared field, not .context
    tools = serializers.ListField(child=StrictCharField(max_length=100), required=False,
                                  default=list, max_length=32)
    stream = serializers.BooleanField(required=False, default=True)
    metadata = serializers.DictField(required=False, default=dict)
    priority = serializers.IntegerField(required=False, default=0, min_value=0, max_value=9)

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("must not be blank")
        if len(value) > settings.MAGEAGENT["MAX_PROMPT_CHARS"]:
            raise serializers.ValidationError(
                f"is longer than {settings.MAGEAGENT['MAX_PROMPT_CHARS']} characters")
        return value

    def validate_tools(self, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("must not repeat a tool")
        return value

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        import orjson

        if len(orjson.dumps(value)) > 16_384:
            raise serializers.ValidationError("must serialize to at most 16 KiB of JSON")
        return value


class TaskListFilterSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    model = serializers.CharField(required=False)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    cursor = serializers.CharField(required=False)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=200)


class EventsQuerySerializer(StrictSerializer):
    after = serializers.IntegerField(required=False, default=0, min_value=0)
    token = serializers.CharField(required=False)


class _TaskFields(serializers.ModelSerializer):
    taskId = serializers.UUIDField(source="id")
    company_id = serializers.CharField(source="company.slug")
    app_id = serializers.CharField(source="app.slug")
    context = serializers.SerializerMethodField()  # type: ignore[assignment]  # a declared field, not .context
    result = serializers.JSONField()
    error = serializers.JSONField()
    routing = serializers.JSONField()
    steps = serializers.ListField(child=serializers.CharField())
    tools = serializers.ListField(child=serializers.CharField())
    metadata = serializers.DictField()

    class Meta:
        model = Task
        fields = ("id", "taskId", "company_id", "app_id", "status", "prompt", "model", "context",
                  "tools", "stream", "metadata", "priority", "result", "error", "routing", "steps",
                  "attempts", "created_at", "started_at", "completed_at", "estimated_duration_ms")

    def get_context(self, task: Task) -> dict[str, Any]:
        return {"useGraphRAG": False, "graphragQuery": None, "additionalContext": None,
                **(task.context or {})}


class TaskOutputSerializer(SharedFieldsMixin, _TaskFields):
    """A task: its inputs, status, result or error, and routing decision."""
