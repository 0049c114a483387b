"""Which OTEL_* settings switch tracing on, and what it costs when they do not (the traces
themselves: test_tracing_e2e.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mageagent import tracing
from mageagent.env import ConfigError
from tests.stack import ROOT

OTEL = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_tracing_is_off_when_no_otel_variable_is_set(env):
    assert tracing.exporters_requested() == []
    assert tracing.configure(service="mageagent-web", web=True, worker=True) is False
    with tracing.span("mageagent.task.enqueue", mageagent__task__id="t") as span:
        assert span is None
    assert tracing.enqueue_headers() == {}


def test_an_otlp_endpoint_alone_switches_the_otlp_exporter_on(env):
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")

    assert tracing.exporters_requested() == ["otlp"]


def test_exporters_are_named_by_otel_traces_exporter_and_none_means_off(env):
    env.setenv("OTEL_TRACES_EXPORTER", "otlp, console")
    assert tracing.exporters_requested() == ["otlp", "console"]

    env.setenv("OTEL_TRACES_EXPORTER", "none")
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing.exporters_requested() == []


def test_the_sdk_disabled_flag_wins(env):
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    env.setenv("OTEL_SDK_DISABLED", "true")

    assert tracing.exporters_requested() == []


def test_an_exporter_this_install_lacks_fails_at_start_up(env):
    env.setenv("OTEL_TRACES_EXPORTER", "zipkin")

    with pytest.raises(ConfigError, match="zipkin not available"):
        tracing.exporters_requested()


def test_otlp_over_grpc_fails_at_start_up_with_the_protocol_it_speaks(env):
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")

    with pytest.raises(ConfigError, match="http/protobuf only"):
        tracing.exporters_requested()


def test_switched_on_it_spans_and_carries_the_trace_in_the_message_headers():
    # In a process of its own: the SDK's provider is global and set once.
    script = """
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from mageagent import tracing

memory = InMemorySpanExporter()
assert tracing.configure(service="mageagent-test", exporters=[memory])
with tracing.span("mageagent.task.enqueue", kind=tracing.SpanKind.PRODUCER, mageagent__task__id="t1") as span:
    headers = tracing.enqueue_headers()
    context = tracing.current_context()
with tracing.llm_call(provider="openai", model="gpt-x", max_tokens=5, params={"temperature": 0.2}) as call:
    tracing.llm_call_done(call, usage={"prompt_tokens": 3, "completion_tokens": 4}, finish_reason="stop")
tracing.attach(context)
with tracing.span("execute_tool calculator", gen_ai__tool__name="calculator") as tool:
    tracing.failed(tool, "tool_error")
tracing.shutdown()
spans = {s.name: s for s in memory.get_finished_spans()}
enqueue, llm, ran = spans["mageagent.task.enqueue"], spans["chat gpt-x"], spans["execute_tool calculator"]
trace_id = format(enqueue.context.trace_id, "032x")
assert headers["traceparent"].split("-")[1] == trace_id, headers
assert enqueue.resource.attributes["service.name"] == "mageagent-test"
assert enqueue.attributes["mageagent.task.id"] == "t1"
assert llm.parent is None  # nothing current between the two blocks
assert dict(llm.attributes) == {
    "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-x", "gen_ai.request.max_tokens": 5, "gen_ai.request.temperature": 0.2,
    "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 4, "gen_ai.response.finish_reasons": ("stop",),
}, dict(llm.attributes)
assert ran.parent.span_id == enqueue.context.span_id  # continued from the handed-over context
assert ran.attributes["error.type"] == "tool_error" and not ran.status.is_ok
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
    assert result.stdout.strip() == "ok", result.stdout + result.stderr
