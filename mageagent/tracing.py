"""OpenTelemetry traces, switched on by the standard OTEL_* variables (README, "Tracing").

Off unless OTEL_TRACES_EXPORTER names an exporter or an OTLP endpoint is set: then the SDK
is never imported and every helper here is a no-op that costs one attribute read, so a
service without a collector pays nothing. On, a task's trace runs from the HTTP request
(Django's middleware) through the enqueue (W3C trace context in the Celery message's
headers), the worker's pickup (the Celery instrumentation), routing, each provider call
(GenAI semantic-convention attributes) and each tool run. Spans are per request, task,
call and tool, never per chunk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .env import ConfigError, env_bool

TRACER = "mageagent"
# The exporters this install carries: OTLP over HTTP (protobuf) and the console's JSON lines.
EXPORTERS = {"otlp": "otlp_proto_http", "otlp_proto_http": "otlp_proto_http", "console": "console"}
# Probes and scrapes are not traced unless OTEL_PYTHON_DJANGO_EXCLUDED_URLS says otherwise.
EXCLUDED_URLS = "/healthz$,/readyz$,/metrics$"

enabled = False


def exporters_requested() -> list[str]:
    """The exporter names the environment asks for; empty means tracing is off."""
    if env_bool("OTEL_SDK_DISABLED", False):
        return []
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                      or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    unknown = sorted(set(names) - {*EXPORTERS, "none"})
    if unknown:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} not available "
                          f"(this install exports with: {', '.join(sorted(EXPORTERS))}, none)")
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if any(EXPORTERS.get(n) == "otlp_proto_http" for n in names) and protocol != "http/protobuf":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this install sends OTLP over "
                          "http/protobuf only (a collector's port 4318)")
    return [n for n in names if n != "none"]


def configure(*, service: str, web: bool = False, worker: bool = False, exporters: list[Any] | None = None) -> bool:
    """Install the SDK once per process when tracing is asked for. `web`: a span per HTTP
    request (call it before the ASGI handler loads its middleware); `worker`: a span per
    Celery task run, continuing the trace its message carries. `exporters` replace the
    environment's (tests hand in the SDK's in-memory one)."""
    global enabled
    names = exporters_requested()
    if enabled or (not names and exporters is None):
        return enabled
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the process's own name.
    resource = Resource.create({SERVICE_NAME: service}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    chosen = exporters if exporters is not None else [_exporter(name) for name in names]
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if web:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        excluded = os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS") or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
        DjangoInstrumentor().instrument(excluded_urls=excluded or EXCLUDED_URLS)
    if worker:
        # Only in the worker: on the web, where the task is sent by name and not registered,
        # the instrumentation's publish span would never end (enqueue_span carries it there).
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
    enabled = True
    return True


def _exporter(name: str) -> Any:
    (entry,) = entry_points(group="opentelemetry_traces_exporter", name=EXPORTERS[name])
    return entry.load()()  # each reads its own OTEL_EXPORTER_* variables


def shutdown() -> None:
    """Export what is buffered (a worker's warm shutdown; atexit does it otherwise)."""
    if enabled:
        trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]


@contextmanager
def _span(name: str, kind: SpanKind, attributes: Mapping[str, Any]) -> Iterator[trace.Span]:
    with trace.get_tracer(TRACER).start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span


def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Any:
    """A span around a block, or nothing at all when tracing is off."""
    if not enabled:
        return nullcontext(None)
    return _span(name, kind, {k.replace("__", "."): v for k, v in attributes.items() if v is not None})


def enqueue_headers() -> dict[str, str]:
    """The current trace context as Celery message headers (W3C traceparent), or none."""
    carrier: dict[str, str] = {}
    if enabled:
        propagate.inject(carrier)
    return carrier


def current_context() -> Any:
    """The caller's context, to continue the trace in another thread or on the event loop."""
    return otel_context.get_current() if enabled else None


def attach(ctx: Any) -> object | None:
    """Continue `current_context()`'s trace here (an asyncio task has a context of its own)."""
    return otel_context.attach(ctx) if ctx is not None else None


def annotate(**attributes: Any) -> None:
    """Attributes on the current span (the worker's task run: task id, company, attempt)."""
    if enabled:
        current = trace.get_current_span()
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key.replace("__", "."), value)


def llm_call(*, provider: str, model: str, max_tokens: int | None, params: Mapping[str, Any] | None) -> Any:
    """A provider call's span, GenAI semantic conventions (gen_ai.*): one per call, its
    usage set by llm_call_done when the stream ends."""
    params = params or {}
    return span(f"chat {model}", kind=SpanKind.CLIENT, gen_ai__operation__name="chat", gen_ai__system=provider,
                gen_ai__provider__name=provider, gen_ai__request__model=model, gen_ai__request__max_tokens=max_tokens,
                gen_ai__request__temperature=params.get("temperature"), gen_ai__request__top_p=params.get("top_p"))


def llm_call_done(span_: trace.Span | None, *, usage: Mapping[str, int], finish_reason: str | None) -> None:
    if span_ is None:
        return
    if usage:
        span_.set_attribute("gen_ai.usage.input_tokens", int(usage.get("prompt_tokens", 0)))
        span_.set_attribute("gen_ai.usage.output_tokens", int(usage.get("completion_tokens", 0)))
    if finish_reason:
        span_.set_attribute("gen_ai.response.finish_reasons", [finish_reason])


def failed(span_: trace.Span | None, code: str) -> None:
    """Mark a span as ended by an error of the contract's `code` (never a message: it may quote a prompt)."""
    if span_ is not None:
        span_.set_attribute("error.type", code)
        span_.set_status(Status(StatusCode.ERROR))
