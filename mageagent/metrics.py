"""The service's Prometheus metrics, defined once and observed where things happen: the
services that change a task's state, the worker's runtime and router, the followers, the
HTTP handler. Each process (web, every worker) keeps its own values and serves them
(/metrics on the web, MAGEAGENT_WORKER_METRICS_PORT on a worker); Prometheus sums them.

Names follow Prometheus's rules: base units (seconds, USD), `_total` on counters,
histograms for durations. Labels are bounded: statuses, the catalog's providers and models,
error codes of providers.llm's own set, route names. Never a task id or a company.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Queue waits and task runs span seconds to minutes; first tokens, tens of ms to seconds.
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

TASKS_CREATED = Counter("mageagent_tasks_created_total", "Tasks accepted")
TASKS_FINISHED = Counter("mageagent_tasks_finished_total", "Tasks that reached a final status", ["status"])
TASK_QUEUE_WAIT = Histogram("mageagent_task_queue_wait_seconds", "From a task's creation to a worker's start of it",
                            buckets=TASK_BUCKETS)
TASK_DURATION = Histogram("mageagent_task_duration_seconds", "From a worker's start of a task to its final status",
                          ["status"], buckets=TASK_BUCKETS)
TIME_TO_FIRST_TOKEN = Histogram("mageagent_time_to_first_token_seconds",
                                "From an attempt's start to its first streamed chunk", ["provider", "model"],
                                buckets=TTFT_BUCKETS)
TOKENS = Counter("mageagent_llm_tokens_total", "Tokens used by provider calls", ["provider", "model", "direction"])
COST = Counter("mageagent_llm_cost_usd_total", "Cost of provider calls in US dollars", ["provider", "model"])
PROVIDER_CALLS = Counter("mageagent_provider_calls_total", "Provider calls made", ["provider", "model"])
PROVIDER_ERRORS = Counter("mageagent_provider_errors_total", "Provider calls that failed",
                          ["provider", "model", "code"])
RETRIES = Counter("mageagent_task_retries_total", "Attempts queued again after a transient failure", ["reason"])
FALLBACKS = Counter("mageagent_fallbacks_total", "Calls moved to another deployment or model after an error",
                    ["code"])
CANCELS = Counter("mageagent_task_cancels_total", "Cancel requests that cancelled a task", ["from_status"])
RATE_LIMIT_WAITS = Counter("mageagent_rate_limit_waits_total", "Calls that waited for a deployment's rate limit")
RATE_LIMIT_WAIT = Counter("mageagent_rate_limit_wait_seconds_total", "Time calls waited for rate limits")
BUDGET_REFUSALS = Counter("mageagent_budget_refusals_total", "Reservations refused by a budget", ["scope"])
TASKS_RUNNING = Gauge("mageagent_tasks_running", "Tasks this worker process runs now")
FOLLOWERS = Gauge("mageagent_followers", "Open followers of tasks", ["kind"])
HTTP_REQUESTS = Counter("mageagent_http_requests_total", "HTTP requests answered", ["method", "view", "status"])
HTTP_DURATION = Histogram("mageagent_http_request_duration_seconds", "Time to answer HTTP requests (to headers)",
                          ["view"], buckets=HTTP_BUCKETS)
SANDBOX_RUNS = Counter("mageagent_sandbox_runs_total", "Programs run in the code sandbox", ["language"])
SANDBOX_KILLS = Counter("mageagent_sandbox_kills_total", "Sandbox runs killed at a limit", ["reason"])

FOLLOWER_KINDS = ("sse", "websocket", "socketio")
for _kind in FOLLOWER_KINDS:
    FOLLOWERS.labels(kind=_kind)
for _status in ("completed", "failed", "cancelled"):
    TASKS_FINISHED.labels(status=_status)


class QueueCollector(Collector):
    """`mageagent_tasks_waiting`: messages in the broker's queue, read at scrape time with
    one pipelined LLEN per priority list (no database query)."""

    def __init__(self, lengths: Callable[[], int]) -> None:
        self.lengths = lengths

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("mageagent_tasks_waiting", "Tasks in the broker's queue, not yet picked up")
        try:
            family.add_metric([], float(self.lengths()))
        except Exception:  # Redis down: the series is absent rather than the scrape failing
            return []
        return [family]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily("mageagent_tasks_waiting", "Tasks in the broker's queue, not yet picked up")]


_queue_collector: QueueCollector | None = None


def queue_collector_register(lengths: Callable[[], int]) -> None:
    global _queue_collector
    if _queue_collector is None:
        _queue_collector = QueueCollector(lengths)
        REGISTRY.register(_queue_collector)


_FAIR_GAUGES = {
    "waiting": ("mageagent_fair_waiting", "Tasks waiting in the fair queues, every tenant together"),
    "window": ("mageagent_fair_window", "Tasks sent to the broker by the fair dispatch and not yet taken"),
    "in_flight": ("mageagent_fair_in_flight", "Tasks handed to workers (sent or running) and not ended"),
    "companies_waiting": ("mageagent_fair_companies_waiting", "Companies with tasks in the fair queues"),
}


class FairCollector(Collector):
    """Fair scheduling totals, read at scrape time with one pipelined round trip. Per-tenant
    numbers are in GET /queue/metrics and the admin's queue page, not here: a label per
    company is unbounded."""

    def __init__(self, totals: Callable[[], dict[str, int]]) -> None:
        self.totals = totals

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            values = self.totals()
        except Exception:  # Redis down: the series are absent rather than the scrape failing
            return []
        families = []
        for key, (name, doc) in _FAIR_GAUGES.items():
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], float(values[key]))
            families.append(family)
        return families

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, doc) for name, doc in _FAIR_GAUGES.values()]


_fair_collector: FairCollector | None = None


def fair_collector_register(totals: Callable[[], dict[str, int]]) -> None:
    global _fair_collector
    if _fair_collector is None:
        _fair_collector = FairCollector(totals)
        REGISTRY.register(_fair_collector)


def running_gauge_bind(count: Callable[[], int]) -> None:
    TASKS_RUNNING.set_function(count)
