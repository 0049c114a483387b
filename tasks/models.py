from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from mageagent.tenancy.models import App, Company


class TaskStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class Task(models.Model):
    """The source of truth for a task. Status changes only through tasks.services."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="tasks")
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="tasks")
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.QUEUED)

    prompt = models.TextField()
    model = models.CharField(max_length=200, null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    tools = models.JSONField(default=list, blank=True)
    stream = models.BooleanField(default=True)
    metadata = models.JSONField(default=dict, blank=True)
    priority = models.PositiveSmallIntegerField(default=0)
    # The conversation and sampling parameters (providers/conversation.py). `messages` is the
    # whole conversation when given (its last user message is `prompt`); empty: the prompt alone.
    messages = models.JSONField(default=list, blank=True)
    system = models.TextField(null=True, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    stop = models.JSONField(null=True, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    response_format = models.JSONField(null=True, blank=True)
    # Functions the client defines (the OpenAI-compatible API): a call to one ends the task
    # with the call in its result, for the client to run.
    client_tools = models.JSONField(default=list, blank=True)
    tool_choice = models.JSONField(null=True, blank=True)

    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    routing = models.JSONField(null=True, blank=True)
    steps = models.JSONField(default=list, blank=True)
    attempts = models.PositiveIntegerField(default=1)  # the current (or last) attempt
    worker = models.CharField(max_length=200, blank=True, default="")

    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    request_hash = models.CharField(max_length=64, blank=True, default="")

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    estimated_duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(fields=("company", "-created_at"), name="task_company_recent"),
            models.Index(fields=("status", "updated_at"), name="task_status_updated"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=("app", "idempotency_key"), condition=Q(idempotency_key__isnull=False),
                name="task_unique_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class RoutedTask(Task):
    """Tasks seen from routing: the decision, its estimate and what the task actually cost.
    Declared here, by the app that owns the rows, so routing never imports tasks; its
    app_label keeps it under Routing in the admin (and in routing's migrations)."""

    class Meta:
        proxy = True
        app_label = "routing"
        verbose_name = "routing decision"
