"""Root-path operations endpoints: /healthz, /readyz, /metrics."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mageagent.redis import sync_client
from tasks.fair import fair_totals
from tasks.runtime.heartbeat import live_workers

from . import broker, metrics
from .errors import error_response

metrics.queue_collector_register(broker.queue_length)
metrics.fair_collector_register(fair_totals)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        sync_client().ping()
        checks["redis"] = "ok"
        workers = live_workers()
        checks["workers"] = f"{len(workers)} live" if workers else "none"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
        checks["workers"] = "unknown"
    ready = checks["database"] == "ok" and checks["redis"] == "ok" and checks["workers"] != "none"
    if ready:
        return JsonResponse({"status": "ready", "checks": checks})
    return JsonResponse({"error": {"code": "unavailable", "message": "not ready", "details": checks}}, status=503)


def prometheus(request: HttpRequest) -> HttpResponse:
    token = settings.MAGEAGENT["METRICS_TOKEN"]
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            response = error_response("authentication_failed", "/metrics needs Authorization: Bearer <token>", 401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
