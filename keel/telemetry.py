"""OpenTelemetry for every Keel process: traces, metrics on a Prometheus scrape endpoint, trace propagation.

Trace context travels as W3C `traceparent`/`tracestate`: in HTTP headers between device and gateway, in
Kafka record headers between gateway and projector, and in the op-log row of the device that captured the
change, so one op's trace runs from capture to its delivery to other devices (docs/observability.md).

Metrics are OpenTelemetry instruments read by a `PrometheusMetricReader`; `prometheus_text()` is what a
service's `/metrics` answers. Values that live in objects (lag of a running projector, bytes a gateway holds
unacknowledged) are reported by `observe`: one observable instrument per name, fed by the callbacks of the
objects alive right now, so a stopped service simply drops out.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from keel.errors import ConfigurationError

__all__ = [
    "EXPORTERS",
    "PROMETHEUS_CONTENT_TYPE",
    "SECONDS_BUCKETS",
    "SIZE_BUCKETS",
    "Telemetry",
    "attributes",
    "capture_spans",
    "configure_telemetry",
    "context_from_headers",
    "context_from_kafka_headers",
    "context_from_traceparent",
    "current_trace_ids",
    "get_meter",
    "get_tracer",
    "kafka_trace_headers",
    "link_to",
    "links_from",
    "observe",
    "prometheus_text",
    "trace_headers",
    "trace_id_of",
    "traceparent_of",
]

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
EXPORTERS = ("none", "console", "otlp", "memory")
# Histogram buckets: OpenTelemetry's defaults are milliseconds-sized (0..10000); Keel measures seconds and counts.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
_TRACE_KEYS = ("traceparent", "tracestate")


class _Captures(SpanProcessor):
    """Hands finished spans to the in-memory exporters of open `capture_spans` blocks (none: nothing to do)."""

    def __init__(self) -> None:
        self.exporters: list[InMemorySpanExporter] = []

    def on_end(self, span: ReadableSpan) -> None:
        """Export to every open capture."""
        for exporter in tuple(self.exporters):
            exporter.export((span,))


@dataclass
class Telemetry:
    """What `configure_telemetry` set up; `memory` holds finished spans when the exporter is 'memory'."""

    service: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    memory: InMemorySpanExporter | None = None
    exporters: set[str] = field(default_factory=set)
    captures: _Captures = field(default_factory=_Captures)

    def add_exporter(self, exporter: str, otlp_endpoint: str | None = None) -> None:
        """Export spans also to `exporter` (each kind once; "none" adds nothing); ConfigurationError if unknown."""
        if exporter not in EXPORTERS:
            raise ConfigurationError(f"unknown span exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
        if exporter == "none" or exporter in self.exporters:
            return
        self.exporters.add(exporter)
        if exporter == "memory":
            self.memory = InMemorySpanExporter()
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.memory))
            return
        span_exporter: SpanExporter
        if exporter == "console":
            span_exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint else OTLPSpanExporter()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))

    def shutdown(self) -> None:
        """Flush and stop exporters."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_configured: Telemetry | None = None


def configure_telemetry(
    service: str, exporter: str = "none", otlp_endpoint: str | None = None, *, sample_ratio: float = 1.0
) -> Telemetry:
    """Install tracer and meter providers once per process; a later call only adds its exporter.

    exporter: "none" (spans are created, for propagation, but not exported), "console", "otlp"
    (OTLP/HTTP to `otlp_endpoint`) or "memory" (kept for tests). The first call names the service and sets
    the sampler: a trace is recorded with probability `sample_ratio` where it starts (a device's capture)
    and every later hop follows that decision (parent-based), so an op's trace is whole or absent. An app
    that embeds the device SDK and configures its own exporter later still gets it added.
    """
    global _configured  # noqa: PLW0603 - OpenTelemetry providers are process-global by design
    if _configured is None:
        resource = Resource.create({"service.name": service, "service.namespace": "keel"})
        sampler = ParentBased(TraceIdRatioBased(min(1.0, max(0.0, sample_ratio))))
        tracer_provider = TracerProvider(resource=resource, sampler=sampler)
        trace.set_tracer_provider(tracer_provider)
        meter_provider = MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
        metrics.set_meter_provider(meter_provider)
        _configured = Telemetry(service, tracer_provider, meter_provider)
        tracer_provider.add_span_processor(_configured.captures)
    _configured.add_exporter(exporter, otlp_endpoint)
    return _configured


@contextmanager
def capture_spans(service: str = "keel") -> Iterator[InMemorySpanExporter]:
    """Spans that end inside the block, kept in memory (tests); nothing is kept once the block is left."""
    telemetry = configure_telemetry(service)
    exporter = InMemorySpanExporter()
    telemetry.captures.exporters.append(exporter)
    try:
        yield exporter
    finally:
        telemetry.captures.exporters.remove(exporter)


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


def link_to(span: trace.Span) -> list[trace.Link]:
    """A link to `span` (none when it is not a real span, e.g. telemetry is not configured)."""
    span_context = span.get_span_context()
    return [trace.Link(span_context)] if span_context.is_valid else []


def context_from_traceparent(traceparent: str | None) -> otel_context.Context | None:
    """The context of a stored or received `traceparent`, or None when absent or unusable."""
    if not traceparent:
        return None
    ctx = extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C `traceparent` naming `span` (None when it is not a real span)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    # Formatted directly (W3C Trace Context, version 00): the projector calls this once per record.
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex-digit trace id inside a `traceparent`."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def current_trace_ids() -> dict[str, str]:
    """`trace_id` and `span_id` of the active span, as hex (empty when none), for log lines."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": format(span_context.trace_id, "032x"), "span_id": format(span_context.span_id, "016x")}


# ---------------------------------------------------------------- observable instruments fed by live objects

ObservationSource = Callable[[], Iterable[tuple[float, Mapping[str, str]]]]


@dataclass
class _Observed:
    kind: Literal["gauge", "counter"]
    sources: list[weakref.WeakMethod[ObservationSource] | Callable[[], ObservationSource | None]]


_observed: dict[str, _Observed] = {}
_observed_lock = threading.Lock()


def _collect(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        del options
        entry = _observed[name]
        merged: dict[tuple[tuple[str, str], ...], float] = {}
        with _observed_lock:
            live = [ref() for ref in entry.sources]
            entry.sources = [ref for ref, source in zip(entry.sources, live, strict=True) if source is not None]
        for source in live:
            if source is None:
                continue
            for value, labels in source():
                key = tuple(sorted(labels.items()))
                # Two live sources of one series (two projectors in one test process): counters add up.
                merged[key] = merged.get(key, 0.0) + value if entry.kind == "counter" else value
        return [Observation(value, dict(key)) for key, value in merged.items()]

    return callback


def observe(
    name: str,
    source: ObservationSource,
    *,
    description: str,
    unit: str = "",
    kind: Literal["gauge", "counter"] = "gauge",
    meter: str = "observed",
) -> None:
    """Report what `source()` yields — (value, labels) pairs — as the instrument `name` at every scrape.

    A bound method is held weakly: when its object is gone, it stops reporting. Instruments are created once
    per name; later calls only add sources (the description and kind of the first call stay).
    """
    reference: weakref.WeakMethod[ObservationSource] | Callable[[], ObservationSource | None]
    reference = weakref.WeakMethod(source) if hasattr(source, "__self__") else (lambda: source)
    with _observed_lock:
        entry = _observed.get(name)
        if entry is not None:
            entry.sources.append(reference)
            return
        _observed[name] = _Observed(kind, [reference])
    instrument_meter = get_meter(meter)
    if kind == "counter":
        instrument_meter.create_observable_counter(name, [_collect(name)], unit=unit, description=description)
    else:
        instrument_meter.create_observable_gauge(name, [_collect(name)], unit=unit, description=description)


def attributes(**values: Any) -> dict[str, Any]:
    """Span/metric attributes without None values."""
    return {key: value for key, value in values.items() if value is not None}
