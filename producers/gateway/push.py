"""The push path: validate each op, keep seqs continuous, encode Avro, produce, and answer after the ack.

Under the device's ledger lock, ops are taken in seq order from the device's head:
- seq <= head with the same event id: a retry of something already consumed, acknowledged again (or its
  rejection repeated); with another event id: a replayed seq, rejected;
- the next seq: validated (schema in the op's version, sizes, no overrides from devices) and either
  encoded with the writer schema of its version or rejected on its own — a rejected or abandoned seq is
  consumed like an accepted one, so it never blocks the seqs after it;
- a seq beyond the next one: a gap; processing stops there and the answer names the expected seq.
Accepted records are produced (idempotent producer, acks=all) and awaited; only then are the outcomes and
the new head committed, and only then does the device hear `acked_seq`. A crash in between leaves the head
where it was: the device resends, the broker gets the records again and the projector drops the copies by
(device_id, device_seq).

Tracing: the push is a `keel.gateway.push` span (child of the device's push span through the request's
`traceparent`, linked to every op's capture span); each accepted op whose device sent its trace context gets
a `keel.gateway.produce` span in *its own* trace, and that span's traceparent goes into the record's Kafka
headers, so the projector continues each op's trace. Ops without one carry the request's traceparent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import ValidationError as PydanticValidationError

from keel.errors import (
    BackpressureError,
    ForbiddenError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    ValidationError,
)
from keel.event_log import LogWriter, OutgoingRecord
from keel.hlc import wall_clock_ms
from keel.logging import get_logger
from keel.telemetry import context_from_traceparent, get_tracer, link_to, links_from, observe, traceparent_of
from producers.gateway.backpressure import DeviceRateLimiter, ProducerBudget
from producers.gateway.failpoints import Failpoints
from producers.gateway.metrics import GatewayMetrics
from producers.gateway.op_verification import ChainVerifier, DeviceChain
from producers.gateway.push_ledger import Outcome, PushLedger, SeqOutcome
from producers.gateway.tokens import DeviceClaims
from producers.wire import AbandonedSeq, PushRequest, PushResponse, Rejection, SequenceGap, WireEvent
from schemas.catalog import Catalog, default_catalog
from schemas.codec import unframe
from schemas.envelope import ChangeEvent, Op, TraceHeaders
from schemas.event_encoder import EventEncoder
from schemas.op_chain import OpLink
from schemas.validation import validate_event

__all__ = ["PushLimits", "PushService"]

_log = get_logger("gateway.push")
_tracer = get_tracer("gateway")
_metrics = GatewayMetrics()
_NONE: Mapping[str, bytes] = {}
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True, slots=True)
class PushLimits:
    """Per-request limits."""

    max_batch_ops: int = 500
    max_op_bytes: int = 64 * 1024
    produce_timeout_s: float = 20.0


@dataclass(slots=True)
class _Item:
    seq: int
    event_id: str
    size: int
    event: ChangeEvent | None = None
    abandoned: AbandonedSeq | None = None
    malformed: str | None = None


@dataclass(slots=True)
class _Verdicts:
    outcomes: list[SeqOutcome] = field(default_factory=list)
    records: list[OutgoingRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    gap: SequenceGap | None = None
    op_traces: dict[int, otel_context.Context] = field(default_factory=dict)  # seq → the op's own trace
    push_span: Span | None = None
    spans: list[Span] = field(default_factory=list)  # produce spans, ended once the broker answered
    chain: DeviceChain = field(default_factory=lambda: DeviceChain(""))  # signed devices (op_verification.py)

    def produce_span(self, event: ChangeEvent) -> Span | None:
        """A `keel.gateway.produce` span in the op's own trace, or None when the device sent none."""
        ctx = self.op_traces.get(event.device_seq)
        if ctx is None:
            return None
        span = _tracer.start_span(
            "keel.gateway.produce",
            context=ctx,
            kind=SpanKind.PRODUCER,
            links=link_to(self.push_span) if self.push_span is not None else [],
            attributes={
                "keel.tenant": event.tenant_id,
                "keel.device": event.device_id,
                "keel.device_seq": event.device_seq,
                "keel.event_id": event.event_id,
                "keel.entity_type": event.entity_type,
                "keel.entity_id": event.entity_id,
                "keel.schema_version": event.schema_version,
            },
        )
        self.spans.append(span)
        return span

    def end_spans(self, error: BaseException | None) -> None:
        """End the produce spans (as failed when the records were not acknowledged)."""
        for span in self.spans:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
            span.end()
        self.spans.clear()


def _raise_if_foreign(claims: DeviceClaims, tenant_id: Any, device_id: Any) -> None:
    if tenant_id is not None and tenant_id != claims.tenant_id:
        raise ForbiddenError(f"device {claims.device_id} cannot push for tenant {tenant_id!r}")
    if device_id is not None and device_id != claims.device_id:
        raise ForbiddenError(f"device {claims.device_id} cannot push as device {device_id!r}")


def _items(claims: DeviceClaims, request: PushRequest) -> list[_Item]:
    items: list[_Item] = []
    for index, raw in enumerate(request.ops):
        _raise_if_foreign(claims, raw.get("tenant_id"), raw.get("device_id"))
        size = len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode())
        try:
            event = WireEvent.model_validate(raw).to_event()
        except PydanticValidationError as error:
            seq = raw.get("device_seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise ValidationError(f"op #{index} has no usable device_seq", field="device_seq") from error
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
            items.append(_Item(seq, str(raw.get("event_id") or ""), size, malformed=problems))
            continue
        items.append(_Item(event.device_seq, event.event_id, size, event=event))
    for abandoned in request.abandoned:
        items.append(_Item(abandoned.seq, abandoned.event_id, 0, abandoned=abandoned))
    items.sort(key=lambda item: item.seq)
    for before, after in itertools.pairwise(items):
        if before.seq == after.seq:
            raise ValidationError(f"seq {after.seq} appears twice in one push", field="device_seq")
    return items


class PushService:
    """Turns one device push into acknowledged Kafka records and a `PushResponse`."""

    def __init__(
        self,
        *,
        ledger: PushLedger,
        writer: LogWriter,
        encoder: EventEncoder,
        rate_limiter: DeviceRateLimiter,
        budget: ProducerBudget,
        limits: PushLimits | None = None,
        catalog: Catalog | None = None,
        failpoints: Failpoints | None = None,
        wall: Callable[[], int] = wall_clock_ms,
        chains: ChainVerifier | None = None,
    ) -> None:
        self._ledger = ledger
        self._chains = chains
        self._writer = writer
        self._encoder = encoder
        self._rate = rate_limiter
        self._budget = budget
        self.limits = limits or PushLimits()
        self._catalog = catalog or default_catalog()
        self._failpoints = failpoints or Failpoints()
        self._wall = wall
        observe(
            "keel_gateway_producer_inflight_bytes",
            self._inflight,
            unit="By",
            description="Bytes handed to the producer and not yet acknowledged by the broker (a queue length)",
        )

    def _inflight(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(self._budget.in_flight), {})]

    def _rejection_of(self, item: _Item) -> Rejection | None:  # noqa: PLR0911 - one return per rule
        """Why a new op cannot be accepted, or None."""
        if item.malformed is not None:
            return Rejection(seq=item.seq, event_id=item.event_id or None, code="malformed", reason=item.malformed)
        event = item.event
        if event is None:  # pragma: no cover - abandoned items never get here
            return None
        if item.size > self.limits.max_op_bytes:
            return Rejection(
                seq=item.seq,
                event_id=item.event_id,
                code="too-large",
                reason=f"op of {item.size} bytes exceeds the {self.limits.max_op_bytes}-byte limit",
            )
        if event.op is Op.OVERRIDE:
            return Rejection(
                seq=item.seq, event_id=item.event_id, code="forbidden-op", reason="devices cannot send overrides"
            )
        if event.entity_type in self._catalog.schemas:
            minimum = self._catalog.policy(event.entity_type).minimum_version
            if event.schema_version < minimum:
                return Rejection(
                    seq=item.seq,
                    event_id=item.event_id,
                    code="upgrade-required",
                    reason=f"{event.entity_type} v{event.schema_version} is below the minimum v{minimum}",
                    field="schema_version",
                )
        try:
            validate_event(event, self._catalog)
        except ValidationError as error:
            return Rejection(seq=item.seq, event_id=item.event_id, code="invalid", reason=str(error), field=error.field)
        return None

    async def _record(
        self, event: ChangeEvent, traceparent: str | None, accepted_at_ms: int, extra: Mapping[str, bytes] = _NONE
    ) -> OutgoingRecord:
        values = {TraceHeaders.ACCEPTED_AT_MS: str(accepted_at_ms).encode(), **extra}
        if traceparent:
            values[TraceHeaders.TRACEPARENT] = traceparent.encode()
        return await self._encoder.record(event, TraceHeaders(values))

    @staticmethod
    def _retry_verdict(item: _Item, previous: SeqOutcome | None, verdicts: _Verdicts) -> None:
        """An op at or below the head: a retry (acknowledged again) or a replayed seq (rejected)."""
        if previous is not None and previous.event_id != item.event_id:
            verdicts.rejections.append(
                Rejection(
                    seq=item.seq,
                    event_id=item.event_id,
                    code="replay",
                    reason=f"seq {item.seq} was already used by event {previous.event_id}",
                    field="device_seq",
                )
            )
        elif previous is not None and previous.outcome is Outcome.REJECTED:
            verdicts.rejections.append(
                Rejection(
                    seq=item.seq,
                    event_id=item.event_id,
                    code=previous.code or "rejected",
                    reason=previous.reason or "",
                    field=previous.field,
                )
            )
        else:
            # A retry of an accepted or abandoned seq (or of one whose record was pruned): acknowledge it again.
            verdicts.duplicates.append(item.seq)

    async def _new_verdict(self, item: _Item, trace: str | None, accepted_at_ms: int, verdicts: _Verdicts) -> None:
        """The next seq: abandoned, rejected on its own, or encoded for the log."""
        chain = verdicts.chain
        if item.abandoned is not None:
            link = chain.consume(item.seq, chain.abandoned_link(item.abandoned), produced=False)
            abandoned = SeqOutcome(item.seq, item.event_id, Outcome.ABANDONED, "abandoned", item.abandoned.reason)
            verdicts.outcomes.append(_linked(abandoned, link))
            return
        # Integrity first (signature, hash, chain): a forged op is refused whatever else it holds.
        integrity = chain.judge(item.event) if item.event is not None else None
        rejection = integrity or self._rejection_of(item)
        if rejection is None and item.event is not None:
            span = verdicts.produce_span(item.event)
            header = traceparent_of(span) if span is not None else trace
            try:
                record = await self._record(item.event, header, accepted_at_ms, chain.headers())
                schema = self._catalog.schema(item.event.entity_type, item.event.schema_version)
                rejection = chain.judge_encoding(item.event, unframe(record.value)[1], schema.parsed)
                if rejection is None:
                    verdicts.records.append(record)
            except ValidationError as error:
                if span is not None:
                    span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
                rejection = Rejection(
                    seq=item.seq, event_id=item.event_id, code="invalid", reason=str(error), field=error.field
                )
        if rejection is None:
            link = chain.consume(item.seq, OpLink.of(item.event) if item.event else None, produced=True)
            verdicts.outcomes.append(_linked(SeqOutcome(item.seq, item.event_id, Outcome.ACCEPTED), link))
            return
        verdicts.rejections.append(rejection)
        # A refused op whose signature and link verified stays in the chain; any other leaves a gap.
        kept = OpLink.of(item.event) if item.event is not None and integrity is None else None
        link = chain.consume(item.seq, kept, produced=False)
        refused = SeqOutcome(
            item.seq, item.event_id, Outcome.REJECTED, rejection.code, rejection.reason, rejection.field
        )
        verdicts.outcomes.append(_linked(refused, link))

    async def push(self, claims: DeviceClaims, request: PushRequest, *, traceparent: str | None = None) -> PushResponse:
        """Process one push (see the module docstring); raises for whole-request refusals and outages."""
        if len(request.ops) > self.limits.max_batch_ops:
            raise PayloadTooLargeError(
                f"{len(request.ops)} ops in one push; the limit is {self.limits.max_batch_ops}", limit_bytes=0
            )
        items = _items(claims, request)
        if not items:
            return PushResponse(acked_seq=await self._ledger.head(claims.device_id))
        try:
            self._rate.raise_if_limited(claims.device_id, max(1, len(request.ops)))
        except BackpressureError:
            _metrics.backpressure("device-rate")
            raise
        trace = traceparent if traceparent and _TRACEPARENT.match(traceparent) else None
        verdicts = _Verdicts(op_traces=_op_traces(request.traces))
        with _tracer.start_as_current_span(
            "keel.gateway.push",
            context=context_from_traceparent(trace),
            kind=SpanKind.SERVER,
            links=links_from(list(verdicts.op_traces.values())),
            attributes={"keel.tenant": claims.tenant_id, "keel.device": claims.device_id, "keel.push.ops": len(items)},
        ) as push_span:
            verdicts.push_span = push_span
            try:
                head, expected = await self._push_under_lock(claims, items, trace, verdicts)
            except BaseException as error:
                verdicts.end_spans(error)
                raise
            verdicts.end_spans(None)
        _metrics.push(
            ops=len(items),
            accepted=len(verdicts.records),
            duplicates=len(verdicts.duplicates),
            abandoned=sum(1 for o in verdicts.outcomes if o.outcome is Outcome.ABANDONED),
            rejection_codes=[r.code for r in verdicts.rejections],
            gap=verdicts.gap is not None,
        )
        if verdicts.rejections or verdicts.gap:
            _log.info(
                "push refused ops",
                device=claims.device_id,
                rejected=[(r.seq, r.code) for r in verdicts.rejections],
                gap=verdicts.gap.model_dump() if verdicts.gap else None,
                schema_versions=sorted({i.event.schema_version for i in items if i.event is not None}),
            )
        return PushResponse(
            acked_seq=max(head, expected - 1),
            rejections=verdicts.rejections,
            duplicates=verdicts.duplicates,
            gap=verdicts.gap,
        )

    async def _push_under_lock(
        self, claims: DeviceClaims, items: list[_Item], trace: str | None, verdicts: _Verdicts
    ) -> tuple[int, int]:
        """Judge, produce and record a push under the device's ledger lock; (head before, next expected seq)."""
        # Keys first: a session holds a pooled connection, and waiting inside it for a second one deadlocks
        # the pool once as many devices push at once as it has connections (a key registered meanwhile
        # was never ordered against the push: registration does not take the device's lock).
        keys = await self._chains.keys_of(claims.device_id) if self._chains is not None else None
        async with self._ledger.session(claims.tenant_id, claims.device_id) as session:
            head = await session.head()
            if self._chains is not None:
                verdicts.chain = await self._chains.begin(claims.device_id, session, head, keys)
            known = await session.outcomes([item.seq for item in items if item.seq <= head])
            expected = head + 1
            accepted_at = self._wall()
            for item in items:
                if item.seq <= head:
                    self._retry_verdict(item, known.get(item.seq), verdicts)
                elif item.seq != expected:
                    verdicts.gap = SequenceGap(expected=expected, received=item.seq)
                    break
                else:
                    expected += 1
                    await self._new_verdict(item, trace, accepted_at, verdicts)
            if verdicts.records:
                self._failpoints.hit("before-produce")
                await self._produce(verdicts.records)
                self._failpoints.hit("after-produce")
            if verdicts.outcomes:
                await session.record(verdicts.outcomes, expected - 1)
        self._failpoints.hit("after-commit")
        return head, expected

    async def _produce(self, records: list[OutgoingRecord]) -> None:
        size = sum(len(r.value or b"") + len(r.key or b"") for r in records)
        started = time.monotonic()
        try:
            with self._budget.reserve(size):
                try:
                    async with asyncio.timeout(self.limits.produce_timeout_s):
                        await self._writer.write(records)
                except TimeoutError as error:
                    raise ServiceUnavailableError(
                        "kafka", f"no acknowledgement within {self.limits.produce_timeout_s:g}s"
                    ) from error
        except BackpressureError:
            _metrics.backpressure("producer-buffer")  # only the reservation raises it: the writer never does
            raise
        _metrics.produced(time.monotonic() - started)


def _linked(outcome: SeqOutcome, link: OpLink | None) -> SeqOutcome:
    """A seq's outcome with its chain link (unchanged for devices that do not sign)."""
    if link is None:
        return outcome
    return replace(outcome, hash=link.hash, prev_hash=link.prev_hash, signature=link.signature)


def _op_traces(traces: dict[int, str]) -> dict[int, otel_context.Context]:
    """The usable trace contexts a device sent along with its ops, by seq (malformed ones are ignored)."""
    found: dict[int, otel_context.Context] = {}
    for seq, traceparent in traces.items():
        ctx = context_from_traceparent(traceparent) if _TRACEPARENT.match(traceparent) else None
        if ctx is not None:
            found[seq] = ctx
    return found
