"""The consumer runtime: fetch batches, decode, dead-letter, commit each batch in one store transaction.

Positions are owned by the store (PostgreSQL), not by the log: on assignment each partition is sought to its
stored offset, and each batch moves the stored offsets compare-and-set, so a consumer that lost a partition
without noticing is fenced instead of applying twice. The log's group offsets are committed afterwards, for
lag and resumption only.

Failures: a permanent one (undecodable, unknown schema, invalid, replayed seq) sends the record to the DLQ —
written before the offset that skips it is committed — and the partition moves on; a transient one (store or
registry unreachable, deadlock) keeps the batch, backs off and retries it, and never reaches the DLQ;
fencing drops the batch and re-seeks to the stored offsets. Rebalances: the revoke handler waits (bounded)
for the batch in flight through an `asyncio.Event`, never a lock the loop could hold across the rebalance.

Tracing: each batch is a `keel.projector.batch` span linked to the trace context of every record in it (a
batch mixes ops of many traces, so links, not parents); each record that carries a context also gets a
`keel.projector.apply` span *in its op's trace* (child of the gateway's produce span, linked to the batch),
whose traceparent is kept with the record's outbox rows so deliveries to other devices link back to it.
`RuntimeConfig.record_spans=False` keeps only the batch spans (docs/observability.md has the overhead).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from consumers.dead_letter import DeadLetter, DeadLetterQueue
from consumers.decoder import EventDecoder, Undecodable
from consumers.failpoints import Failpoints
from consumers.metrics import ProjectorMetrics, accepted_at_ms
from consumers.source import ConsumerSource, Records
from keel.backoff import Backoff
from keel.errors import FencedError, IntegrityError, KeelError, SequenceError, TransientError
from keel.event_log import LogRecord
from keel.lifecycle import Lifecycle, State
from keel.logging import get_logger
from keel.telemetry import context_from_kafka_headers, get_tracer, link_to, links_from, traceparent_of
from projections.batch import OffsetAdvance, ProjectionBatch, Rejection, SourcedEvent, SourcePosition, TopicPartition
from projections.store import ProjectionStore
from schemas.envelope import TraceHeaders

__all__ = ["ConsumerRuntime", "RuntimeConfig", "RuntimeStats"]

_log = get_logger("consumer")
_tracer = get_tracer("projector")
_metrics = ProjectorMetrics()


@dataclass(frozen=True)
class RuntimeConfig:
    """Tunables of one runtime."""

    group_id: str
    max_records: int = 500
    poll_timeout_ms: int = 200
    revoke_wait_s: float = 10.0
    commit_timeout_s: float = 5.0
    commit_to_log: bool = True  # rebuilds read without a group: nothing to commit
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 5.0
    record_spans: bool = True  # a span per record in its op's trace (besides the batch span)


@dataclass
class RuntimeStats:
    """Counters for health, metrics and tests."""

    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    decisions: int = 0
    dead_lettered: int = 0
    fenced: int = 0
    transient_failures: int = 0
    last_error: str | None = None
    dead_letter_classes: dict[str, int] = field(default_factory=dict)


class ConsumerRuntime:
    """One consumer: a source, a decoder, a dead-letter queue and a store (STARTING → RUNNING → DRAINING → STOPPED)."""

    def __init__(
        self,
        source: ConsumerSource,
        store: ProjectionStore,
        decoder: EventDecoder,
        dead_letters: DeadLetterQueue,
        config: RuntimeConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        failpoints: Failpoints | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.decoder = decoder
        self.dead_letters = dead_letters
        self.config = config
        self.stats = RuntimeStats()
        self.lifecycle = Lifecycle(f"consumer {config.group_id}")
        self.positions: dict[TopicPartition, int | None] = {}  # stored next offset; None = nothing stored yet
        self.last_fetch_at: dict[TopicPartition, float] = {}
        self.batch_started_at: float | None = None
        self.waiting_on: str | None = None  # why the runtime is backing off, while it is
        self._unknown: set[TopicPartition] = set()
        self._sent_letters: set[SourcePosition] = set()  # dead-lettered in a batch not committed yet
        self._idle = asyncio.Event()
        self._idle.set()
        self.assigned = asyncio.Event()  # set once partitions were first assigned
        self._clock = clock
        self._failpoints = failpoints or Failpoints()  # test only (consumers/failpoints.py)
        self._backoff = Backoff(config.backoff_base_s, config.backoff_cap_s)

    # ------------------------------------------------------------------ rebalance handler

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Let the batch in flight finish (bounded), then forget the partitions."""
        if partitions:
            self._failpoints.hit("mid-rebalance")
        if not self._idle.is_set():
            # Not `asyncio.wait_for` here or below: on 3.11 it returns the result of an awaitable that completes
            # in the iteration of a cancel and loses the cancel (CPython gh-86296); `asyncio.timeout` cannot.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.revoke_wait_s):
                    await self._idle.wait()
        for partition in partitions:
            self.positions.pop(partition, None)
            self.last_fetch_at.pop(partition, None)
            self._unknown.discard(partition)
        _log.info("partitions revoked", group=self.config.group_id, partitions=_names(partitions))

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Seek new partitions to their stored offsets; if the store is down, pause them until it is back."""
        now = self._clock()
        for partition in partitions:
            self.last_fetch_at[partition] = now
            if partition not in self.positions:
                self._unknown.add(partition)
        if self._unknown:
            self.source.pause(self._unknown)
            try:
                # Bounded: the group waits for this callback; the main loop retries what is left.
                async with asyncio.timeout(self.config.revoke_wait_s):
                    await self._load_positions()
            except (TransientError, TimeoutError) as error:
                _log.warning("stored offsets unavailable at assignment; partitions stay paused", error=repr(error))
        self.assigned.set()
        _log.info("partitions assigned", group=self.config.group_id, partitions=_names(partitions))

    async def _load_positions(self) -> None:
        wanted = sorted(self._unknown)
        stored = await self.store.load_offsets(self.config.group_id, wanted)
        owned = self.source.assignment()
        for partition in wanted:
            if partition not in owned:
                self._unknown.discard(partition)  # revoked meanwhile
            if partition not in self._unknown:
                continue
            position = stored.get(partition)
            self.positions[partition] = position
            # Nothing stored: read from the log's start, whatever the group's committed offset says.
            self.source.seek(partition, 0 if position is None else position)
            self._unknown.discard(partition)
            self.source.resume([partition])

    # ------------------------------------------------------------------ main loop

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain: finish the batch in flight, commit, leave the group."""
        self.lifecycle.move_to(State.STARTING)
        _metrics.started()
        while not stop.is_set():
            try:
                await self.source.start(self)
                break
            except TransientError as error:
                await self._back_off(error, stop)
        else:
            self.lifecycle.move_to(State.STOPPED)
            return
        self.lifecycle.move_to(State.RUNNING)
        try:
            while not stop.is_set():
                await self._step(stop)
        finally:
            self.lifecycle.move_to(State.DRAINING)
            await self.close()
            self.lifecycle.move_to(State.STOPPED)

    async def close(self) -> None:
        """Leave the group and disconnect (no drain: whatever was not committed is fetched again later)."""
        try:
            await self.source.stop()
        except KeelError as error:
            _log.warning("source stop failed", error=str(error))

    async def _step(self, stop: asyncio.Event) -> None:
        try:
            if self._unknown:
                await self._load_positions()
            records = await self.source.getmany(self.config.poll_timeout_ms, self.config.max_records)
        except TransientError as error:
            await self._back_off(error, stop)
            return
        if not records:
            self.waiting_on = None  # whatever failed before works again
            return
        now = self._clock()
        for partition in records:
            self.last_fetch_at[partition] = now
        await self._process(records, stop)

    async def _back_off(self, error: Exception, stop: asyncio.Event) -> None:
        self.stats.transient_failures += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        self.waiting_on = self.stats.last_error
        delay = self._backoff.next_delay()
        _metrics.backed_off(error, delay)
        _log.warning("transient failure, backing off", error=self.stats.last_error, delay_s=round(delay, 3))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # not wait_for: see on_revoked
                await stop.wait()

    async def _process(self, records: Records, stop: asyncio.Event) -> None:
        self._idle.clear()
        self.batch_started_at = self._clock()
        try:
            while True:
                batch = self._owned(records)
                if not batch:
                    return
                try:
                    await self._commit(batch)
                except FencedError as error:
                    await self._after_fence(batch, error)
                    return
                except TransientError as error:
                    if stop.is_set():
                        return  # draining: nothing committed, the next owner fetches it again
                    await self._park(error, stop)
                    continue
                except Exception as error:  # noqa: BLE001 - see below
                    # A bug (e.g. a failing migration step) is neither the record's fault nor passing: never
                    # dead-letter, keep the batch, back off, and let health report it.
                    _log.exception("batch failed unexpectedly; retrying", error=repr(error))
                    if stop.is_set():
                        return
                    await self._park(error, stop)
                    continue
                self._backoff.reset()
                self.waiting_on = None
                return
        finally:
            self.batch_started_at = None
            self._idle.set()

    async def _park(self, error: Exception, stop: asyncio.Event) -> None:
        """Back off with the batch held; a rebalance meanwhile need not wait (the offset compare fences us)."""
        self._idle.set()
        try:
            await self._back_off(error, stop)
        finally:
            self._idle.clear()

    def _owned(self, records: Records) -> dict[TopicPartition, list[LogRecord]]:
        """Records of partitions we still own with a known position, minus any already applied."""
        owned: dict[TopicPartition, list[LogRecord]] = {}
        for partition, items in records.items():
            if partition not in self.positions:
                continue  # revoked, or waiting for its stored offset (it is re-sought when that arrives)
            position = self.positions[partition]
            fresh = [r for r in items if position is None or r.offset >= position]
            if fresh:
                owned[partition] = fresh
        return owned

    async def _commit(self, batch: dict[TopicPartition, list[LogRecord]]) -> None:
        # Read before the first await: a rebalance may revoke partitions while records are being decoded.
        expected = {partition: self.positions[partition] for partition in batch}
        records = [record for partition in sorted(batch) for record in batch[partition]]
        contexts = [context_from_kafka_headers(record.headers) for record in records]
        spans = _RecordSpans(self.config.record_spans)
        with _tracer.start_as_current_span(
            "keel.projector.batch",
            kind=SpanKind.CONSUMER,
            links=links_from(contexts),
            attributes={"keel.group": self.config.group_id, "messaging.batch.message_count": len(records)},
        ) as batch_span:
            try:
                decoded = await self._decode(records, contexts, spans, batch_span)
                await self._commit_decoded(batch, expected, decoded, spans, batch_span)
            except BaseException as error:
                spans.end_all(error)
                raise
            spans.end_all(None)

    async def _decode(
        self, records: list[LogRecord], contexts: list[otel_context.Context], spans: _RecordSpans, batch_span: Span
    ) -> _Decoded:
        """Decode every record; start its span; sort events from dead letters."""
        decoded = _Decoded(len(records))
        for record, ctx in zip(records, contexts, strict=True):
            result = await self.decoder.decode(record)
            span = spans.start(record, ctx, batch_span, None if isinstance(result, Undecodable) else result)
            if isinstance(result, Undecodable):
                spans.dead_lettered(record, result.error)
                decoded.letters.append(DeadLetter(record, result.error, result.schema_id))
                decoded.rejections.append(_rejection(record, result))
                continue
            trace = traceparent_of(span) if span is not None else _header(record, TraceHeaders.TRACEPARENT)
            if trace is not None:
                result = replace(result, trace=trace)
            decoded.events.append(result)
            decoded.by_position[result.position] = record
            accepted = accepted_at_ms(record.headers)
            if accepted is not None:
                decoded.accepted_at[id(result)] = accepted
        return decoded

    async def _commit_decoded(
        self,
        batch: dict[TopicPartition, list[LogRecord]],
        expected: dict[TopicPartition, int | None],
        decoded: _Decoded,
        spans: _RecordSpans,
        batch_span: Span,
    ) -> None:
        events, letters, rejections, by_position = (
            decoded.events,
            decoded.letters,
            decoded.rejections,
            decoded.by_position,
        )
        advances = tuple(
            OffsetAdvance(partition, expected[partition], batch[partition][-1].offset + 1) for partition in batch
        )
        # Durable before the offsets that skip them are committed; not again when a retry repeats the batch.
        await self.dead_letters.send([d for d in letters if _position(d.record) not in self._sent_letters])
        self._sent_letters.update(_position(d.record) for d in letters)
        commit_seconds = 0.0
        while True:
            with _tracer.start_as_current_span("keel.projector.commit", attributes={"keel.events": len(events)}):
                commit_started = time.monotonic()
                outcome = await self.store.apply_batch(
                    ProjectionBatch(self.config.group_id, advances, tuple(events), tuple(rejections))
                )
                commit_seconds += time.monotonic() - commit_started
            if outcome.committed:
                break
            replayed = [self._replayed_letter(by_position[s.position], s) for s in outcome.replayed]
            replayed += [  # links that contradict a signed device's chain (docs/security.md)
                DeadLetter(by_position[s.position], IntegrityError(why), s.schema_id) for s, why in outcome.refused
            ]
            dropped = [*outcome.replayed, *(s for s, _ in outcome.refused)]
            for letter in replayed:
                spans.dead_lettered(letter.record, letter.error)
            await self.dead_letters.send([d for d in replayed if _position(d.record) not in self._sent_letters])
            self._sent_letters.update(_position(d.record) for d in replayed)
            letters.extend(replayed)
            rejections.extend(_rejection_of_replay(s, letter) for s, letter in zip(dropped, replayed, strict=True))
            gone = {s.position for s in dropped}
            events = [s for s in events if s.position not in gone]
        self._sent_letters.clear()
        for advance in advances:
            if advance.partition in self.positions:  # not if revoked meanwhile (the next owner reloads it)
                self.positions[advance.partition] = advance.next_offset
        self._count(outcome.applied, outcome.duplicates, outcome.decisions, letters)
        batch_span.set_attributes(
            {
                "keel.applied": outcome.applied,
                "keel.duplicates": outcome.duplicates,
                "keel.decisions": outcome.decisions,
                "keel.dead_lettered": len(letters),
            }
        )
        _metrics.batch_committed(
            records=decoded.records,
            applied=outcome.applied,
            duplicates=outcome.duplicates,
            events=events,
            accepted_at=decoded.accepted_at,
            dead_letter_classes=[type(letter.error).__name__ for letter in letters],
            conflicts=outcome.conflicts,
            started=decoded.started,
            commit_seconds=commit_seconds,
        )
        self._idle.set()  # the store commit is the flush; a rebalance must not wait for the log commit below
        self._failpoints.hit("after-store-commit")
        if self.config.commit_to_log:
            try:
                async with asyncio.timeout(self.config.commit_timeout_s):  # not wait_for: see on_revoked
                    await self.source.commit({a.partition: a.next_offset for a in advances})
            except (TransientError, TimeoutError) as error:
                _log.debug("log commit skipped (offsets are safe in the store)", error=repr(error))

    def _replayed_letter(self, record: LogRecord, sourced: SourcedEvent) -> DeadLetter:
        event = sourced.event
        error = SequenceError(
            f"device {event.device_id} seq {event.device_seq} was already applied with another event id; "
            f"event {event.event_id} replays the sequence number with different content"
        )
        return DeadLetter(record, error, sourced.schema_id)

    def _count(self, applied: int, duplicates: int, decisions: int, letters: list[DeadLetter]) -> None:
        stats = self.stats
        stats.batches += 1
        stats.applied += applied
        stats.duplicates += duplicates
        stats.decisions += decisions
        stats.dead_lettered += len(letters)
        for letter in letters:
            name = type(letter.error).__name__
            stats.dead_letter_classes[name] = stats.dead_letter_classes.get(name, 0) + 1

    async def _after_fence(self, batch: dict[TopicPartition, list[LogRecord]], error: FencedError) -> None:
        """Drop the batch and continue from what the store says (we may no longer own some partitions)."""
        self.stats.fenced += 1
        _metrics.fenced()
        _log.warning("fenced: dropping the batch and re-seeking to stored offsets", error=str(error))
        for partition in batch:
            if partition in self.positions:
                del self.positions[partition]
                self._unknown.add(partition)
        self.source.pause(self._unknown)
        with contextlib.suppress(TransientError):
            await self._load_positions()


@dataclass
class _Decoded:
    """A batch after decoding: events to apply, dead letters, and what metrics need of them."""

    records: int
    started: float = field(default_factory=time.monotonic)
    events: list[SourcedEvent] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    by_position: dict[SourcePosition, LogRecord] = field(default_factory=dict)
    accepted_at: dict[int, int] = field(default_factory=dict)  # id(event) → gateway acceptance time (ms)


class _RecordSpans:
    """`keel.projector.apply` spans of one batch: children of each record's own trace context, linked to the batch.

    Started when a record is decoded and ended when its batch commits (or fails), so a span's duration is the
    record's time in the projector. Records without a trace context get none (the batch span covers them).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._spans: dict[SourcePosition, Span] = {}

    def start(
        self, record: LogRecord, ctx: otel_context.Context, batch_span: Span, sourced: SourcedEvent | None
    ) -> Span | None:
        """The span of one record, or None (disabled, or the record carries no trace context)."""
        if not self.enabled or not ctx:
            return None
        attributes: dict[str, str | int] = {
            "messaging.destination.name": record.topic,
            "messaging.kafka.partition": record.partition,
            "messaging.kafka.offset": record.offset,
        }
        if sourced is not None:
            attributes.update(_event_attributes(sourced))
        span = _tracer.start_span(
            "keel.projector.apply",
            context=ctx,
            kind=SpanKind.CONSUMER,
            links=link_to(batch_span),
            attributes=attributes,
        )
        if not span.get_span_context().is_valid:
            return None
        self._spans[_position(record)] = span
        return span

    def dead_lettered(self, record: LogRecord, error: KeelError) -> None:
        """Mark a record's span: it went to the dead-letter topic."""
        span = self._spans.get(_position(record))
        if span is not None:
            span.set_attributes({"keel.outcome": "dead-lettered", "keel.error_class": type(error).__name__})
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))

    def end_all(self, error: BaseException | None) -> None:
        """End every span (as failed when the batch did not commit)."""
        for span in self._spans.values():
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, f"batch not committed: {type(error).__name__}"))
            span.end()
        self._spans.clear()


def _event_attributes(sourced: SourcedEvent) -> dict[str, str | int]:
    event = sourced.event
    return {
        "keel.event_id": event.event_id,
        "keel.tenant": event.tenant_id,
        "keel.device": event.device_id,
        "keel.device_seq": event.device_seq,
        "keel.entity_type": event.entity_type,
        "keel.entity_id": event.entity_id,
        "keel.schema_version": event.schema_version,
    }


def _header(record: LogRecord, name: str) -> str | None:
    for key, value in record.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _rejection(record: LogRecord, decoded: Undecodable) -> Rejection:
    envelope = decoded.envelope
    position = SourcePosition(record.topic, record.partition, record.offset)
    reason = str(decoded.error)
    if envelope is None:
        return Rejection(position, type(decoded.error).__name__, reason)
    return Rejection(
        position,
        type(decoded.error).__name__,
        reason,
        envelope.tenant_id,
        envelope.device_id,
        envelope.event_id,
        envelope.entity_type,
        envelope.entity_id,
    )


def _rejection_of_replay(sourced: SourcedEvent, letter: DeadLetter) -> Rejection:
    event = sourced.event
    return Rejection(
        sourced.position,
        type(letter.error).__name__,
        str(letter.error),
        event.tenant_id,
        event.device_id,
        event.event_id,
        event.entity_type,
        event.entity_id,
    )


def _position(record: LogRecord) -> SourcePosition:
    return SourcePosition(record.topic, record.partition, record.offset)


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
