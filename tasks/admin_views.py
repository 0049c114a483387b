"""Staff-only admin pages that are not a model's: the queue page."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .models import Task, TaskStatus
from .runtime.heartbeat import live_workers
from .selectors import fair_share, queue_metrics

RECENT_FAILURES = 20


def _per_company() -> list[dict[str, Any]]:
    counts: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    for row in Task.objects.values("company_id", "company__slug", "status").annotate(n=Count("id")).order_by():
        counts[(row["company_id"], row["company__slug"])][row["status"]] = row["n"]
    try:
        shares = fair_share(company_ids=[cid for cid, _ in counts])
    except Exception:  # Redis down: the counts the database has
        shares = {}
    return [{"company": slug, **{s: by_status.get(s, 0) for s in TaskStatus.values}, "fair": shares.get(cid)}
            for (cid, slug), by_status in sorted(counts.items(), key=lambda item: item[0][1])]


def queue_view(request: HttpRequest) -> HttpResponse:
    """Wrapped by AdminSite.admin_view (TaskAdmin.get_urls): only active staff reach it."""
    if not request.user.has_perm("tasks.view_task"):
        raise PermissionDenied
    context: dict[str, Any] = {**admin.site.each_context(request), "title": "Queue",
                               "statuses": TaskStatus.values, "flower_url": settings.FLOWER_URL}
    try:
        context["metrics"] = queue_metrics(company_id=None)
        context["workers"] = sorted(live_workers())
    except Exception as exc:  # Redis down: still show what the database knows
        context["unavailable"] = f"{type(exc).__name__}: {exc}"
    context["failures"] = (Task.objects.filter(status=TaskStatus.FAILED).select_related("company", "app")
                           .order_by("-completed_at")[:RECENT_FAILURES])
    context["per_company"] = _per_company()
    return TemplateResponse(request, "admin/tasks/queue.html", context)
