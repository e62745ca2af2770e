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
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from keel.errors import (
    ForbiddenError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    ValidationError,
)
from keel.event_log import LogWriter, OutgoingRecord
from keel.hlc import wall_clock_ms
from keel.logging import get_logger
from producers.gateway.backpressure import DeviceRateLimiter, ProducerBudget
from producers.gateway.failpoints import Failpoints
from producers.gateway.push_ledger import Outcome, PushLedger, SeqOutcome
from producers.gateway.tokens import DeviceClaims
from producers.wire import AbandonedSeq, PushRequest, PushResponse, Rejection, SequenceGap, WireEvent
from schemas.catalog import Catalog, default_catalog
from schemas.envelope import ChangeEvent, Op, TraceHeaders
from schemas.event_encoder import EventEncoder
from schemas.validation import validate_event

__all__ = ["PushLimits", "PushService"]

_log = get_logger("gateway.push")
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
    ) -> None:
        self._ledger = ledger
        self._writer = writer
        self._encoder = encoder
        self._rate = rate_limiter
        self._budget = budget
        self.limits = limits or PushLimits()
        self._catalog = catalog or default_catalog()
        self._failpoints = failpoints or Failpoints()
        self._wall = wall

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

    async def _record(self, event: ChangeEvent, traceparent: str | None, accepted_at_ms: int) -> OutgoingRecord:
        values = {TraceHeaders.ACCEPTED_AT_MS: str(accepted_at_ms).encode()}
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
        if item.abandoned is not None:
            verdicts.outcomes.append(
                SeqOutcome(item.seq, item.event_id, Outcome.ABANDONED, "abandoned", item.abandoned.reason)
            )
            return
        rejection = self._rejection_of(item)
        if rejection is None and item.event is not None:
            try:
                verdicts.records.append(await self._record(item.event, trace, accepted_at_ms))
            except ValidationError as error:
                rejection = Rejection(
                    seq=item.seq, event_id=item.event_id, code="invalid", reason=str(error), field=error.field
                )
        if rejection is None:
            verdicts.outcomes.append(SeqOutcome(item.seq, item.event_id, Outcome.ACCEPTED))
            return
        verdicts.rejections.append(rejection)
        verdicts.outcomes.append(
            SeqOutcome(item.seq, item.event_id, Outcome.REJECTED, rejection.code, rejection.reason, rejection.field)
        )

    async def push(self, claims: DeviceClaims, request: PushRequest, *, traceparent: str | None = None) -> PushResponse:
        """Process one push (see the module docstring); raises for whole-request refusals and outages."""
        if len(request.ops) > self.limits.max_batch_ops:
            raise PayloadTooLargeError(
                f"{len(request.ops)} ops in one push; the limit is {self.limits.max_batch_ops}", limit_bytes=0
            )
        items = _items(claims, request)
        if not items:
            return PushResponse(acked_seq=await self._ledger.head(claims.device_id))
        self._rate.raise_if_limited(claims.device_id, max(1, len(request.ops)))
        trace = traceparent if traceparent and _TRACEPARENT.match(traceparent) else None
        verdicts = _Verdicts()
        async with self._ledger.session(claims.tenant_id, claims.device_id) as session:
            head = await session.head()
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
                await self._produce(verdicts.records)
                self._failpoints.hit("after-produce")
            if verdicts.outcomes:
                await session.record(verdicts.outcomes, expected - 1)
        self._failpoints.hit("after-commit")
        if verdicts.rejections or verdicts.gap:
            _log.info(
                "push refused ops",
                device=claims.device_id,
                rejected=[(r.seq, r.code) for r in verdicts.rejections],
                gap=verdicts.gap.model_dump() if verdicts.gap else None,
            )
        return PushResponse(
            acked_seq=max(head, expected - 1),
            rejections=verdicts.rejections,
            duplicates=verdicts.duplicates,
            gap=verdicts.gap,
        )

    async def _produce(self, records: list[OutgoingRecord]) -> None:
        size = sum(len(r.value or b"") + len(r.key or b"") for r in records)
        with self._budget.reserve(size):
            try:
                async with asyncio.timeout(self.limits.produce_timeout_s):
                    await self._writer.write(records)
            except TimeoutError as error:
                raise ServiceUnavailableError(
                    "kafka", f"no acknowledgement within {self.limits.produce_timeout_s:g}s"
                ) from error
