"""The runtime's spans and metrics on fakes: a batch links every record, each record with a trace context gets
an apply span in its own trace, and its outbox rows keep that span's traceparent."""

from __future__ import annotations

import asyncio
import re
import uuid

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from consumers.dead_letter import DeadLetterQueue
from consumers.decoder import EventDecoder, entity_of_topic
from consumers.runtime import ConsumerRuntime, RuntimeConfig
from consumers.source import InMemoryConsumerSource
from keel.event_log import OutgoingRecord
from keel.telemetry import capture_spans, prometheus_text
from projections.outbox import OutboxKind
from schemas.domain_migrations import build_registry
from schemas.envelope import TraceHeaders
from tests.consumers.fake_world import DLQ, TOPIC, World, eventually
from tests.consumers.helpers import EventFactory


def _traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def _span_id(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


def _trace_id(traceparent: str) -> int:
    return int(traceparent.split("-")[1], 16)


def _counter(name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}\{{[^}}]*{labels}[^}}]*\}} ([0-9.e+]+)$", prometheus_text().decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _project(world: World, record_spans: bool, expected: int) -> ConsumerRuntime:
    decoder = EventDecoder(world.registry, build_registry(disabled=()), entity_of_topic("k"))
    source = InMemoryConsumerSource(world.log, [TOPIC])
    config = RuntimeConfig("g", max_records=50, poll_timeout_ms=10, record_spans=record_spans)
    runtime = ConsumerRuntime(source, world.store, decoder, DeadLetterQueue(world.writer, DLQ), config)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await eventually(lambda: runtime.stats.applied + runtime.stats.dead_lettered == expected)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    return runtime


async def _world_with_traced_records() -> tuple[World, list[str], str, str]:
    """Three traced events, one untraced event and one traced record that cannot be decoded."""
    world = World()
    factory = EventFactory()
    events = [factory.event(f"dev-{i}", f"t-{i}", title=str(i)) for i in range(4)]
    traces = [_traceparent() for _ in range(3)]
    records = [
        await world.encoder.record(event, TraceHeaders({TraceHeaders.TRACEPARENT: trace.encode()}))
        for event, trace in zip(events[:3], traces, strict=True)
    ]
    records.append(await world.encoder.record(events[3]))
    poison = _traceparent()
    records.append(OutgoingRecord(TOPIC, b"t-x", b"\x07garbage", ((TraceHeaders.TRACEPARENT, poison.encode()),)))
    await world.writer.write(records)
    return world, traces, poison, events[3].event_id


async def test_each_traced_record_is_applied_in_its_own_trace_and_linked_from_its_batch() -> None:
    world, traces, poison, untraced = await _world_with_traced_records()
    dead_before = _counter("keel_projector_dead_letters_total", 'reason="DecodeError"')
    applied_before = _counter("keel_projector_applied_total")
    with capture_spans() as exporter:
        await _project(world, record_spans=True, expected=5)
        finished = list(exporter.get_finished_spans())
    wanted = {_trace_id(t) for t in [*traces, poison]}
    spans: list[ReadableSpan] = [s for s in finished if s.context is not None and s.context.trace_id in wanted]
    applies = {s.context.trace_id: s for s in spans if s.name == "keel.projector.apply" and s.context is not None}
    assert set(applies) == wanted  # the untraced record got none
    batches = [
        s
        for s in finished
        if s.name == "keel.projector.batch"
        and {_span_id(t) for t in traces} & {link.context.span_id for link in s.links}
    ]
    assert batches
    assert {_span_id(t) for t in [*traces, poison]} <= {link.context.span_id for b in batches for link in b.links}
    for trace in traces:
        span = applies[_trace_id(trace)]
        assert span.parent is not None
        assert span.parent.span_id == _span_id(trace)
        assert span.attributes["keel.entity_type"] == "task"
        assert {link.context.span_id for link in span.links} <= {b.context.span_id for b in batches if b.context}
    dead = applies[_trace_id(poison)]
    assert dead.attributes["keel.outcome"] == "dead-lettered"
    assert dead.attributes["keel.error_class"] == "DecodeError"
    assert dead.status.status_code is StatusCode.ERROR
    # The outbox rows keep each apply span's context (the untraced one keeps none).
    rows = {r.entry.event_id: r.entry.trace for r in world.store.outbox.rows if r.entry.kind is OutboxKind.CHANGE}
    for trace in traces:
        span = applies[_trace_id(trace)]
        assert span.context is not None
        assert rows[str(span.attributes["keel.event_id"])] == (
            f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{int(span.context.trace_flags):02x}"
        )
    assert rows[untraced] is None
    assert _counter("keel_projector_dead_letters_total", 'reason="DecodeError"') == dead_before + 1
    assert _counter("keel_projector_applied_total") == applied_before + 4


async def test_without_record_spans_the_outbox_keeps_the_records_own_context() -> None:
    world, traces, poison, _ = await _world_with_traced_records()
    with capture_spans() as exporter:
        await _project(world, record_spans=False, expected=5)
        finished = list(exporter.get_finished_spans())
    wanted = {_trace_id(t) for t in [*traces, poison]}
    assert not [s for s in finished if s.context and s.context.trace_id in wanted]
    assert [s for s in finished if s.name == "keel.projector.batch"]
    rows = sorted(r.entry.trace or "" for r in world.store.outbox.rows if r.entry.kind is OutboxKind.CHANGE)
    assert rows == sorted(["", *traces])
