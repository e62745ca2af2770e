"""Trace context survives a hop through HTTP headers and Kafka headers; metrics reach the scrape text."""

from __future__ import annotations

from keel.telemetry import (
    configure_telemetry,
    context_from_headers,
    context_from_kafka_headers,
    get_meter,
    get_tracer,
    kafka_trace_headers,
    prometheus_text,
    trace_headers,
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
