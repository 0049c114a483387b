"""Staff admin for tasks. Read-only: status changes go through tasks.services (the actions)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from mageagent.errors import DomainError

from . import events, services
from .admin_views import queue_view
from .models import RoutedTask, Task

# The change page shows at most this many events; a long answer has thousands of chunks.
EVENT_LOG_LIMIT = 500


def _pretty(value: Any) -> SafeString:
    if value in (None, "", [], {}):
        return format_html("<span>{}</span>", "—")
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>',
                       json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


def _event_row(raw: str) -> tuple[Any, ...]:
    event = orjson.loads(raw)
    seq, kind, ts = event.pop("seq", ""), event.pop("type", ""), event.pop("ts", "")
    body = event.pop("content") if kind == "chunk" and set(event) == {"content"} else (
        json.dumps(event, ensure_ascii=False, sort_keys=True) if event else "")
    return seq, kind, ts, body


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "company", "app", "model", "attempts", "created_at", "duration")
    list_filter = ("status", "company", "app", "model")
    list_select_related = ("company", "app")
    search_fields = ("prompt",)
    search_help_text = "A task id (exact) or words of the prompt."
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    actions = ("cancel_tasks", "retry_tasks")
    list_per_page = 50
    fieldsets = (
        (None, {"fields": ("id", "status", "company", "app", "model", "priority", "attempts", "worker")}),
        ("Input", {"fields": ("prompt", "context_pretty", "tools", "stream", "metadata_pretty",
                              "idempotency_key")}),
        ("Outcome", {"fields": ("result_pretty", "error_pretty", "routing_pretty", "steps")}),
        ("Times", {"fields": ("created_at", "started_at", "completed_at", "updated_at", "duration",
                              "estimated_duration_ms")}),
        ("Event log", {"fields": ("event_log",)}),
    )
    readonly_fields = (
        "id", "status", "company", "app", "model", "priority", "attempts", "worker", "prompt", "context_pretty",
        "tools", "stream", "metadata_pretty", "idempotency_key", "result_pretty", "error_pretty",
        "routing_pretty", "steps", "created_at", "started_at", "completed_at", "updated_at", "duration",
        "estimated_duration_ms", "event_log",
    )

    def get_urls(self) -> list[URLPattern]:
        queue = path("queue/", self.admin_site.admin_view(queue_view), name="tasks_task_queue")
        return [queue, *super().get_urls()]

    # Tasks are created over the API and change state only through services.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        return False

    # The actions change state (through services): they need the model's change permission,
    # which this admin otherwise never grants through forms.
    def has_operate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("tasks.change_task"))

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Task],
                           search_term: str) -> tuple[QuerySet[Task], bool]:
        try:
            task_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=task_id), False

    @admin.display(description="duration")
    def duration(self, task: Task) -> str:
        if task.started_at is None or task.completed_at is None:
            return "—"
        return f"{(task.completed_at - task.started_at).total_seconds():.2f} s"

    @admin.display(description="context")
    def context_pretty(self, task: Task) -> SafeString:
        return _pretty(task.context)

    @admin.display(description="metadata")
    def metadata_pretty(self, task: Task) -> SafeString:
        return _pretty(task.metadata)

    @admin.display(description="result")
    def result_pretty(self, task: Task) -> SafeString:
        return _pretty(task.result)

    @admin.display(description="error")
    def error_pretty(self, task: Task) -> SafeString:
        return _pretty(task.error)

    @admin.display(description="routing")
    def routing_pretty(self, task: Task) -> SafeString:
        return _pretty(task.routing)

    @admin.display(description="events")
    def event_log(self, task: Task) -> SafeString:
        try:
            raw = events.read_after(str(task.id), 0)
        except Exception as exc:  # Redis down must not hide the rest of the page
            return format_html("<em>event log unavailable: {}</em>", type(exc).__name__)
        if raw is None:
            return format_html("<em>{}</em>", "no event log (expired after the retention TTL, or never written)")
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                                (_event_row(r) for r in raw[:EVENT_LOG_LIMIT]))
        more = format_html("<p>… {} more events</p>", len(raw) - EVENT_LOG_LIMIT) if len(raw) > EVENT_LOG_LIMIT else ""
        return format_html('<table class="event-log"><thead><tr><th>seq</th><th>type</th><th>time</th>'
                           "<th>data</th></tr></thead><tbody>{}</tbody></table>{}", rows, more)

    @admin.action(description="Cancel selected tasks", permissions=["operate"])
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        cancelled, refused = 0, []
        for task in queryset:
            try:
                services.task_cancel(task=task)
                cancelled += 1
            except DomainError as exc:
                refused.append(f"{task.id}: {exc}")
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} task(s).", messages.SUCCESS)
        for line in refused:
            self.message_user(request, f"Not cancelled {line}", messages.WARNING)

    @admin.action(description="Retry selected failed/cancelled tasks (as new tasks)", permissions=["operate"])
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        for task in queryset.select_related("company", "app"):
            try:
                new_task = services.task_retry(task=task)
            except DomainError as exc:  # what POST /tasks would refuse (status, model, tools, budget)
                self.message_user(request, f"Not retried {task.id}: {exc}", messages.WARNING)
                continue
            url = reverse("admin:tasks_task_change", args=(new_task.pk,))
            self.message_user(request, format_html('Retried {} as <a href="{}">{}</a>.', task.id, url, new_task.id),
                              messages.SUCCESS)


@admin.register(RoutedTask)
class RoutedTaskAdmin(admin.ModelAdmin):
    list_display = ("id", "company", "status", "routed_model", "reason", "estimated", "actual", "fallbacks",
                    "created_at")
    list_filter = ("status", "company")
    list_select_related = ("company",)
    date_hierarchy = "created_at"
    fields = ("id", "company", "app", "status", "model", "routing_record")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RoutedTask | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RoutedTask | None = None) -> bool:
        return False

    @admin.display(description="model")
    def routed_model(self, obj: RoutedTask) -> str:
        routing = obj.routing or {}
        return routing.get("model_used") or routing.get("model") or "—"

    @admin.display(description="reason")
    def reason(self, obj: RoutedTask) -> str:
        return (obj.routing or {}).get("reason", "—")

    @admin.display(description="est. $")
    def estimated(self, obj: RoutedTask) -> Any:
        return (obj.routing or {}).get("estimated_cost_usd")

    @admin.display(description="actual $")
    def actual(self, obj: RoutedTask) -> Any:
        return (obj.routing or {}).get("actual_cost_usd")

    @admin.display(description="fallbacks")
    def fallbacks(self, obj: RoutedTask) -> int:
        return len((obj.routing or {}).get("fallbacks") or [])

    @admin.display(description="routing")
    def routing_record(self, obj: RoutedTask) -> SafeString:
        return _pretty(obj.routing)
