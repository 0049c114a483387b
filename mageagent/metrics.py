"""Prometheus metrics of the web process; queue gauges are read from the Task table at scrape."""

from __future__ import annotations

from prometheus_client import Gauge

from tasks.selectors import queue_metrics

TASKS = Gauge("mageagent_tasks", "Tasks by status (all companies)", ["status"])
PROCESSING_MS = Gauge("mageagent_processing_ms", "Processing time of recent completed tasks", ["stat"])
WORKERS = Gauge("mageagent_workers", "Live worker processes")


def refresh_queue_gauges() -> None:
    m = queue_metrics(company_id=None)
    for status in ("waiting", "active", "completed", "failed", "cancelled", "delayed"):
        TASKS.labels(status=status).set(m[status])
    PROCESSING_MS.labels(stat="avg").set(m["avg_processing_ms"] or 0)
    PROCESSING_MS.labels(stat="p95").set(m["p95_processing_ms"] or 0)
    WORKERS.set(m["workers"])
