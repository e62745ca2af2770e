"""The projector's metrics (OpenTelemetry instruments, scraped as Prometheus text) and their recording.

Names start with `keel_`, carry their unit (`_seconds`, `_records`) and use bounded labels only: entity type,
field, rule, error class, topic and partition — never a device or tenant id. docs/observability.md lists
each one with what to read from it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence

from keel.telemetry import SECONDS_BUCKETS, SIZE_BUCKETS, get_meter
from projections.batch import ConflictNote, SourcedEvent
from schemas.envelope import TraceHeaders

__all__ = ["ProjectorMetrics", "accepted_at_ms"]

_meter = get_meter("projector")

_batches = _meter.create_counter("keel_projector_batches_total", description="Batches committed")
_batch_records = _meter.create_histogram(
    "keel_projector_batch_records",
    description="Records per committed batch (decoded and dead-lettered)",
    explicit_bucket_boundaries_advisory=SIZE_BUCKETS,
)
_batch_seconds = _meter.create_histogram(
    "keel_projector_batch_seconds",
    unit="s",
    description="Processing time of a batch: decode, dead letters, commit (retries included)",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_commit_seconds = _meter.create_histogram(
    "keel_projector_commit_seconds",
    unit="s",
    description="Time of the PostgreSQL transaction that commits a batch",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_applied = _meter.create_counter("keel_projector_applied_total", description="Events applied to the projections")
_duplicates = _meter.create_counter(
    "keel_projector_duplicates_total", description="Redelivered events dropped by (device_id, device_seq)"
)
_dead_letters = _meter.create_counter(
    "keel_projector_dead_letters_total", description="Records sent to the dead-letter topic, by error class"
)
_conflicts = _meter.create_counter(
    "keel_projector_conflicts_total", description="Conflict decisions recorded, by entity type, field and rule"
)
_consensus = _meter.create_histogram(
    "keel_projector_time_to_consensus_seconds",
    unit="s",
    description="From the earlier write of a conflicting pair (its HLC) to the commit of the decision",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_push_to_projected = _meter.create_histogram(
    "keel_push_to_projected_seconds",
    unit="s",
    description="From the gateway accepting a change (keel-accepted-at-ms) to its projection commit",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_schema_versions = _meter.create_counter(
    "keel_projector_events_by_version_total", description="Events applied, by entity type and writer schema version"
)
_retries = _meter.create_counter(
    "keel_projector_retries_total", description="Failures the consumer backed off on (the reason is in its log)"
)
_backoff = _meter.create_counter(
    "keel_projector_backoff_seconds_total", unit="s", description="Time the consumer spent backing off"
)
_fenced = _meter.create_counter(
    "keel_projector_fenced_total", description="Batches dropped because another consumer committed first"
)
_restarts = _meter.create_counter(
    "keel_projector_restarts_total", description="Consumer restarts by the supervisor, by cause (stalled, crashed)"
)


def accepted_at_ms(headers: Iterable[tuple[str, bytes]]) -> int | None:
    """The gateway's acceptance time of a record (`keel-accepted-at-ms`), or None."""
    for key, value in headers:
        if key == TraceHeaders.ACCEPTED_AT_MS:
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ProjectorMetrics:
    """Records what a consumer runtime does (stateless: the instruments are process-wide)."""

    def batch_committed(
        self,
        *,
        records: int,
        applied: int,
        duplicates: int,
        events: Sequence[SourcedEvent],
        accepted_at: dict[int, int],
        dead_letter_classes: Iterable[str],
        conflicts: Sequence[ConflictNote],
        started: float,
        commit_seconds: float,
    ) -> None:
        """One committed batch; `accepted_at` maps id(event) → the gateway's acceptance time in ms."""
        now_ms = time.time_ns() // 1_000_000
        _batches.add(1)
        _batch_records.record(records)
        _batch_seconds.record(max(0.0, time.monotonic() - started))
        _commit_seconds.record(commit_seconds)
        if applied:
            _applied.add(applied)
        if duplicates:
            _duplicates.add(duplicates)
        for reason, count in Counter(dead_letter_classes).items():
            _dead_letters.add(count, {"reason": reason})
        for (entity_type, field, rule), count in Counter((c.entity_type, c.field, c.rule) for c in conflicts).items():
            _conflicts.add(count, {"entity_type": entity_type, "field": field, "rule": rule})
        for conflict in conflicts:
            if conflict.first_write_ms > 0:
                _consensus.record(max(0.0, (now_ms - conflict.first_write_ms) / 1000))
        versions = Counter((s.event.entity_type, s.event.schema_version) for s in events)
        for (entity_type, version), count in versions.items():
            _schema_versions.add(count, {"entity_type": entity_type, "version": str(version)})
        for sourced in events:
            accepted = accepted_at.get(id(sourced))
            if accepted is not None:
                _push_to_projected.record(max(0.0, (now_ms - accepted) / 1000))

    def started(self) -> None:
        """A consumer started: report the unlabelled counters at zero, so rates exist before the first event."""
        for counter in (_batches, _applied, _duplicates, _retries, _backoff, _fenced):
            counter.add(0)

    def backed_off(self, error: Exception, delay_s: float) -> None:
        """A failure and the delay taken before retrying (the error's class is logged, not a label)."""
        del error
        _retries.add(1)
        _backoff.add(delay_s)

    def fenced(self) -> None:
        """A batch dropped after fencing."""
        _fenced.add(1)

    def restarted(self, cause: str) -> None:
        """The supervisor restarted the consumer ("stalled" or "crashed")."""
        _restarts.add(1, {"cause": cause})
