"""OpenTelemetry for every Keel process: traces, metrics on a Prometheus scrape endpoint, trace propagation.

Trace context travels as W3C `traceparent`/`tracestate`: in HTTP headers between device and gateway, in
Kafka record headers between gateway and projector, and in the op-log row of the device that captured the
change, so one op's trace runs from capture to its delivery to other devices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "Telemetry",
    "attributes",
    "configure_telemetry",
    "context_from_headers",
    "context_from_kafka_headers",
    "get_meter",
    "get_tracer",
    "kafka_trace_headers",
    "links_from",
    "prometheus_text",
    "trace_headers",
]

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
_TRACE_KEYS = ("traceparent", "tracestate")


@dataclass
class Telemetry:
    """What `configure_telemetry` set up; `memory` holds finished spans when the exporter is 'memory'."""

    service: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    memory: InMemorySpanExporter | None = None

    def shutdown(self) -> None:
        """Flush and stop exporters."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_configured: Telemetry | None = None


def configure_telemetry(service: str, exporter: str = "none", otlp_endpoint: str | None = None) -> Telemetry:
    """Install tracer and meter providers once per process (later calls return the first set-up).

    exporter: "none" (spans are created, for propagation, but not exported), "console", "otlp"
    (OTLP/HTTP to `otlp_endpoint`) or "memory" (kept for tests).
    """
    global _configured  # noqa: PLW0603 - OpenTelemetry providers are process-global by design
    if _configured is not None:
        return _configured
    resource = Resource.create({"service.name": service, "service.namespace": "keel"})
    tracer_provider = TracerProvider(resource=resource)
    memory: InMemorySpanExporter | None = None
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint else OTLPSpanExporter()
    elif exporter == "memory":
        memory = InMemorySpanExporter()
        tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(tracer_provider)
    meter_provider = MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
    metrics.set_meter_provider(meter_provider)
    _configured = Telemetry(service, tracer_provider, meter_provider, memory)
    return _configured


def get_tracer(name: str) -> trace.Tracer:
    """A tracer for a component."""
    return trace.get_tracer(f"keel.{name}")


def get_meter(name: str) -> metrics.Meter:
    """A meter for a component."""
    return metrics.get_meter(f"keel.{name}")


def trace_headers(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """W3C trace headers of the current (or given) context, for HTTP requests and op-log rows."""
    carrier: dict[str, str] = {}
    inject(carrier, context=ctx)
    return carrier


def context_from_headers(headers: Mapping[str, str]) -> otel_context.Context:
    """The trace context carried by HTTP headers (or a stored op-log carrier)."""
    return extract({k.lower(): v for k, v in headers.items() if k.lower() in _TRACE_KEYS})


def kafka_trace_headers(ctx: otel_context.Context | None = None) -> list[tuple[str, bytes]]:
    """W3C trace headers as Kafka record headers."""
    return [(key, value.encode()) for key, value in trace_headers(ctx).items()]


def context_from_kafka_headers(headers: Iterable[tuple[str, bytes]] | None) -> otel_context.Context:
    """The trace context carried by Kafka record headers."""
    carrier = {key: value.decode("latin-1") for key, value in headers or () if key in _TRACE_KEYS}
    return extract(carrier)


def prometheus_text() -> bytes:
    """The Prometheus exposition of every metric in this process (for a /metrics endpoint)."""
    return bytes(generate_latest(REGISTRY))


def links_from(contexts: Sequence[otel_context.Context]) -> list[trace.Link]:
    """Span links to the spans active in `contexts` (a batch span links every record it processes)."""
    links: list[trace.Link] = []
    for ctx in contexts:
        span_context = trace.get_current_span(ctx).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    return links


def attributes(**values: Any) -> dict[str, Any]:
    """Span/metric attributes without None values."""
    return {key: value for key, value in values.items() if value is not None}
