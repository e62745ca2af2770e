"""Trace context survives a hop through HTTP headers and Kafka headers; metrics reach the scrape text."""

from __future__ import annotations

import gc
import re
import uuid

import pytest
from opentelemetry import trace

from keel.errors import ConfigurationError
from keel.telemetry import (
    capture_spans,
    configure_telemetry,
    context_from_headers,
    context_from_kafka_headers,
    context_from_traceparent,
    get_meter,
    get_tracer,
    kafka_trace_headers,
    link_to,
    observe,
    prometheus_text,
    trace_headers,
    trace_id_of,
    traceparent_of,
)


def test_a_trace_continues_across_http_and_kafka_hops() -> None:
    telemetry = configure_telemetry("test", exporter="memory")
    assert telemetry.memory is not None
    tracer = get_tracer("test")
    with tracer.start_as_current_span("capture") as capture:
        http_headers = trace_headers()
    with tracer.start_as_current_span("push", context=context_from_headers(http_headers)):
        kafka_headers = kafka_trace_headers()
    with tracer.start_as_current_span("apply", context=context_from_kafka_headers(kafka_headers)):
        pass
    spans = {s.name: s for s in telemetry.memory.get_finished_spans() if s.name in {"capture", "push", "apply"}}
    trace_id = capture.get_span_context().trace_id
    assert {s.context.trace_id for s in spans.values()} == {trace_id}
    assert spans["push"].parent is not None
    assert spans["push"].parent.span_id == spans["capture"].context.span_id
    assert spans["apply"].parent is not None
    assert spans["apply"].parent.span_id == spans["push"].context.span_id


def test_metrics_are_exposed_in_prometheus_text() -> None:
    configure_telemetry("test", exporter="memory")
    counter = get_meter("test").create_counter("keel_test_things", description="things counted by the test")
    counter.add(3, {"kind": "a"})
    text = prometheus_text().decode()
    assert "keel_test_things" in text
    assert 'kind="a"' in text


def test_a_stored_traceparent_names_its_span_and_bad_ones_are_refused() -> None:
    configure_telemetry("test")
    with get_tracer("test").start_as_current_span("capture") as span:
        stored = traceparent_of(span)
    assert stored is not None
    context = span.get_span_context()
    assert stored == f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    assert trace_id_of(stored) == f"{context.trace_id:032x}"
    restored = context_from_traceparent(stored)
    assert restored is not None
    assert trace.get_current_span(restored).get_span_context().span_id == context.span_id
    assert context_from_traceparent("00-not-a-trace") is None
    assert context_from_traceparent(None) is None
    assert trace_id_of("garbage") is None
    assert link_to(trace.INVALID_SPAN) == []


def test_exporters_are_added_once_and_unknown_ones_refused() -> None:
    telemetry = configure_telemetry("test", exporter="memory")
    memory = telemetry.memory
    assert configure_telemetry("test", exporter="memory").memory is memory  # asking again keeps the one exporter
    with pytest.raises(ConfigurationError, match="unknown span exporter 'zipkin'"):
        telemetry.add_exporter("zipkin")


def test_a_capture_keeps_only_the_spans_that_end_inside_it() -> None:
    tracer = get_tracer("test")
    with capture_spans() as captured:
        with tracer.start_as_current_span("inside"):
            pass
        open_span = tracer.start_span("ends-after")
    open_span.end()
    with tracer.start_as_current_span("after"):
        pass
    assert [span.name for span in captured.get_finished_spans()] == ["inside"]


class _Gauge:
    def __init__(self, value: float) -> None:
        self.value = value

    def observations(self) -> list[tuple[float, dict[str, str]]]:
        return [(self.value, {"part": "a"})]


def test_observed_values_follow_live_objects_and_counters_add_up() -> None:
    configure_telemetry("test")
    first, second = _Gauge(3), _Gauge(4)
    name = f"keel_test_observed_{uuid.uuid4().hex[:8]}"
    observe(name, first.observations, description="a test gauge")
    observe(name, second.observations, description="a test gauge")
    assert f'{name}{{otel_scope_name="keel.observed",otel_scope_schema_url="",otel_scope_version="",part="a"}} 4.0' in (
        prometheus_text().decode()
    )
    counter = f"keel_test_counted_{uuid.uuid4().hex[:8]}"
    observe(counter, first.observations, description="a test counter", kind="counter")
    observe(counter, second.observations, description="a test counter", kind="counter")
    assert re.search(rf'{counter}_total\{{[^}}]*part="a"\}} 7\.0', prometheus_text().decode())
    del second
    gc.collect()  # a source that is gone stops reporting
    assert re.search(rf'{counter}_total\{{[^}}]*part="a"\}} 3\.0', prometheus_text().decode())
