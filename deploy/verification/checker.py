"""A Jepsen-style consistency checker: acknowledged ops lost, applied twice, reordered, or diverged.

It judges evidence, never a live system, so the demo and every chaos scenario feed it the same way:

- **acknowledged**: what devices believe the gateway acknowledged, one `AckedOp` (device_id, device_seq,
  event_id, fingerprint) per op marked sent;
- **applied**: what the projection holds, one `AppliedOp` per row of its dedup table (`applied_ops`), and
  optionally the event ids of its change-feed rows (`feed_event_ids`, one row per applied change);
- **log** (optional): the records of the change topics, one `LogEntry` per record (copies included);
- **digests**: per device, per (tenant, entity type, schema version) of the projection, and optionally of a
  clean single-process replay of the log (`deploy/verification/replay.py`).

It reports, each as `Finding`s: acknowledged ops lost (not applied) or altered (applied as another event),
acknowledged ops missing from the log, ops applied twice, per-device seq gaps (a seq below the device's
highest applied one that is neither applied nor known to have been consumed without an event — rejected or
abandoned), seq inversions (a device's seqs going down within one partition), and divergence (a device's
digest against the projection's, the projection's against the replay's). A digest missing on one side is
the digest of an empty table: the collectors only list (tenant, type, version) triples that have rows.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.digest import empty_digest
from schemas.envelope import ChangeEvent

__all__ = [
    "AckedOp",
    "AppliedOp",
    "CheckReport",
    "DeviceDigest",
    "DigestKey",
    "Evidence",
    "Finding",
    "FindingKind",
    "LogEntry",
    "check",
    "op_fingerprint",
    "seq_ranges",
]

DigestKey = tuple[str, str, int]  # (tenant_id, entity_type, schema version)
DedupKey = tuple[str, int]  # (device_id, device_seq)


def op_fingerprint(event: ChangeEvent) -> str:
    """What identifies an op's content across versions: its `hash` when signed, else a sha256 of its identity.

    The identity (ids, seq, entity, op and clock) survives up-casting, so a device's op and the projector's
    decoded copy of it in a newer schema version have the same fingerprint.
    """
    if event.hash is not None:
        return event.hash.hex()
    identity = [
        event.event_id,
        event.tenant_id,
        event.device_id,
        event.device_seq,
        event.entity_type,
        event.entity_id,
        event.op.value,
        event.hlc.encode(),
    ]
    return hashlib.sha256(json.dumps(identity, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AckedOp:
    """An op a device holds as acknowledged by the gateway."""

    device_id: str
    device_seq: int
    event_id: str
    fingerprint: str = ""

    @property
    def key(self) -> DedupKey:
        """The dedup key."""
        return (self.device_id, self.device_seq)


@dataclass(frozen=True, slots=True)
class AppliedOp:
    """A row of the projection's dedup table: the op and the log record it was applied from."""

    device_id: str
    device_seq: int
    event_id: str
    topic: str = ""
    partition: int = 0
    log_offset: int = 0

    @property
    def key(self) -> DedupKey:
        """The dedup key."""
        return (self.device_id, self.device_seq)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One record of a change topic, decoded far enough to name its op."""

    device_id: str
    device_seq: int
    event_id: str
    fingerprint: str
    topic: str
    partition: int
    offset: int

    @property
    def key(self) -> DedupKey:
        """The dedup key."""
        return (self.device_id, self.device_seq)


@dataclass(frozen=True, slots=True)
class DeviceDigest:
    """A device's digest of one entity type, in the version it stores that type."""

    device_id: str
    tenant_id: str
    entity_type: str
    version: int
    digest: str

    @property
    def key(self) -> DigestKey:
        """Where the projection's digest to compare with lives."""
        return (self.tenant_id, self.entity_type, self.version)


@dataclass(frozen=True)
class Evidence:
    """Everything the checker judges; see the module docstring."""

    acknowledged: Sequence[AckedOp]
    applied: Sequence[AppliedOp]
    consumed_without_event: Mapping[str, frozenset[int]] = field(default_factory=dict)
    feed_event_ids: Sequence[str] | None = None
    log: Sequence[LogEntry] | None = None
    device_digests: Sequence[DeviceDigest] = ()
    projection_digests: Mapping[DigestKey, str] = field(default_factory=dict)
    replay_digests: Mapping[DigestKey, str] | None = None
    sequenced_devices: frozenset[str] | None = None  # whose seqs must be gap-free; default: the acknowledging ones


class FindingKind(enum.StrEnum):
    """What went wrong."""

    LOST = "lost"  # acknowledged, not applied
    ALTERED = "altered"  # acknowledged, but another event sits under its key (or its id) in the projection or log
    MISSING_FROM_LOG = "missing-from-log"  # acknowledged, absent from the log
    DUPLICATED = "duplicated"  # applied more than once
    SEQ_GAP = "seq-gap"
    SEQ_INVERSION = "seq-inversion"
    DIVERGED = "diverged"


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation: its kind, whom it concerns (a device, a tenant) and what exactly was seen."""

    kind: FindingKind
    subject: str
    detail: str
    count: int = 1  # ops it stands for (extra applications for DUPLICATED, missing seqs for SEQ_GAP)

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind.value, "subject": self.subject, "detail": self.detail, "count": self.count}


@dataclass(frozen=True)
class CheckReport:
    """The verdict: counts of what was checked, and every finding."""

    acknowledged: int
    applied: int
    log_records: int | None
    digests_compared: int
    findings: tuple[Finding, ...]
    unacknowledged_applied: int  # applied ops their device does not hold as acknowledged (it never heard the ack)

    def of(self, kind: FindingKind) -> list[Finding]:
        """Findings of one kind."""
        return [f for f in self.findings if f.kind is kind]

    def count(self, *kinds: FindingKind) -> int:
        """Ops (or seqs) the findings of these kinds stand for."""
        return sum(f.count for f in self.findings if f.kind in kinds)

    @property
    def lost(self) -> int:
        """Acknowledged ops whose event is not what the projection applied under their key."""
        return self.count(FindingKind.LOST, FindingKind.ALTERED)

    @property
    def duplicated(self) -> int:
        """Extra applications of ops."""
        return self.count(FindingKind.DUPLICATED)

    @property
    def diverged(self) -> bool:
        """Whether any two sides disagree on any digest."""
        return bool(self.of(FindingKind.DIVERGED))

    @property
    def ok(self) -> bool:
        """No finding at all."""
        return not self.findings

    def summary(self) -> list[str]:
        """One line per fact, for people."""
        log = f", {self.log_records} log records" if self.log_records is not None else ""
        checked = (
            f"checked {self.acknowledged} acknowledged ops, {self.applied} applied{log}, "
            f"{self.digests_compared} digest comparisons"
        )
        verdict = (
            f"lost {self.lost}, duplicated {self.duplicated}, "
            f"seq gaps {self.count(FindingKind.SEQ_GAP)}, inversions {self.count(FindingKind.SEQ_INVERSION)}, "
            f"missing from the log {self.count(FindingKind.MISSING_FROM_LOG)}, "
            f"diverged {len(self.of(FindingKind.DIVERGED))}"
        )
        lines = [checked, verdict]
        lines += [f"{f.kind.value}: {f.subject}: {f.detail}" for f in self.findings[:20]]
        if len(self.findings) > 20:
            lines.append(f"… and {len(self.findings) - 20} more findings")
        return lines

    def as_json(self, *, max_findings: int = 200) -> dict[str, Any]:
        """JSON form (findings capped at `max_findings`; the counts are complete)."""
        return {
            "ok": self.ok,
            "acknowledged": self.acknowledged,
            "applied": self.applied,
            "log_records": self.log_records,
            "digests_compared": self.digests_compared,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "seq_gaps": self.count(FindingKind.SEQ_GAP),
            "seq_inversions": self.count(FindingKind.SEQ_INVERSION),
            "missing_from_log": self.count(FindingKind.MISSING_FROM_LOG),
            "diverged": self.diverged,
            "unacknowledged_applied": self.unacknowledged_applied,
            "findings": [f.as_json() for f in self.findings[:max_findings]],
        }


def seq_ranges(seqs: Iterable[int]) -> str:
    """`3-5, 9` for {3, 4, 5, 9}."""
    ordered = sorted(set(seqs))
    parts: list[str] = []
    start = previous = None
    for seq in ordered:
        if start is None:
            start = previous = seq
        elif previous is not None and seq == previous + 1:
            previous = seq
        else:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = previous = seq
    if start is not None:
        parts.append(f"{start}" if start == previous else f"{start}-{previous}")
    return ", ".join(parts)


def _acknowledged_findings(evidence: Evidence) -> list[Finding]:
    applied: dict[DedupKey, set[str]] = defaultdict(set)
    for row in evidence.applied:
        applied[row.key].add(row.event_id)
    in_log: dict[DedupKey, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for entry in evidence.log or ():
        in_log[entry.key][entry.event_id].add(entry.fingerprint)
    findings: list[Finding] = []
    for op in evidence.acknowledged:
        logged = in_log.get(op.key, {})
        events = applied.get(op.key)
        if not events:
            where = ""
            if evidence.log is not None:
                where = "; it is in the log, unprojected" if op.event_id in logged else "; it is not in the log either"
            findings.append(Finding(FindingKind.LOST, op.device_id, f"seq {op.device_seq} ({op.event_id}){where}"))
        elif op.event_id not in events:
            others = ", ".join(sorted(events))
            findings.append(
                Finding(
                    FindingKind.ALTERED,
                    op.device_id,
                    f"seq {op.device_seq}: acknowledged as {op.event_id}, applied as {others}",
                )
            )
        if evidence.log is None:
            continue
        if op.event_id not in logged:
            findings.append(Finding(FindingKind.MISSING_FROM_LOG, op.device_id, f"seq {op.device_seq} ({op.event_id})"))
        elif op.fingerprint and logged[op.event_id] - {op.fingerprint}:
            findings.append(
                Finding(
                    FindingKind.ALTERED,
                    op.device_id,
                    f"seq {op.device_seq} ({op.event_id}): the log holds other content under this event id",
                )
            )
    return findings


def _duplicate_findings(evidence: Evidence) -> list[Finding]:
    keys_by_event: dict[str, Counter[DedupKey]] = defaultdict(Counter)
    for row in evidence.applied:
        keys_by_event[row.event_id][row.key] += 1
    feed = Counter(evidence.feed_event_ids or ())
    findings: list[Finding] = []
    for event_id in sorted(set(keys_by_event) | set(feed)):
        rows = keys_by_event.get(event_id, Counter())
        times = max(sum(rows.values()), feed.get(event_id, 0))
        if times <= 1:
            continue
        keys = ", ".join(f"{device}#{seq}" for device, seq in sorted(rows))
        findings.append(
            Finding(
                FindingKind.DUPLICATED,
                min(rows)[0] if rows else f"event {event_id}",
                f"event {event_id} applied {times} times (dedup rows: {keys or 'none'}; "
                f"feed rows: {feed.get(event_id, 0)})",
                count=times - 1,
            )
        )
    return findings


def _gap_findings(evidence: Evidence) -> list[Finding]:
    sequenced = evidence.sequenced_devices
    if sequenced is None:
        sequenced = frozenset(op.device_id for op in evidence.acknowledged)
    applied: dict[str, set[int]] = defaultdict(set)
    for row in evidence.applied:
        applied[row.device_id].add(row.device_seq)
    findings: list[Finding] = []
    for device in sorted(sequenced):
        seqs = applied.get(device, set())
        if not seqs:
            continue
        known = seqs | set(evidence.consumed_without_event.get(device, frozenset()))
        missing = set(range(1, max(seqs) + 1)) - known
        if missing:
            findings.append(
                Finding(
                    FindingKind.SEQ_GAP,
                    device,
                    f"seqs {seq_ranges(missing)} missing below applied seq {max(seqs)}",
                    count=len(missing),
                )
            )
    return findings


def _inversions(rows: Iterable[tuple[str, int, str, int, int]], where: str, first_only: bool) -> list[Finding]:
    """(device, seq, topic, partition, offset) rows: a device's seqs must rise along each partition."""
    by_partition: dict[tuple[str, str, int], list[tuple[int, int]]] = defaultdict(list)
    for device, seq, topic, partition, offset in rows:
        by_partition[(device, topic, partition)].append((offset, seq))
    findings: list[Finding] = []
    for (device, topic, partition), entries in sorted(by_partition.items()):
        seen: set[int] = set()
        highest: tuple[int, int] | None = None  # (seq, offset)
        for offset, seq in sorted(entries):
            if first_only:
                if seq in seen:
                    continue  # a later copy of a record (producer retry, resend after a crash): not an inversion
                seen.add(seq)
            if highest is not None and seq < highest[0]:
                findings.append(
                    Finding(
                        FindingKind.SEQ_INVERSION,
                        device,
                        f"{where} {topic}[{partition}]: seq {seq} at offset {offset} "
                        f"after seq {highest[0]} at offset {highest[1]}",
                    )
                )
            if highest is None or seq > highest[0]:
                highest = (seq, offset)
    return findings


def _divergence_findings(evidence: Evidence) -> tuple[list[Finding], int]:
    empty = empty_digest()
    findings: list[Finding] = []
    compared = 0
    for device in sorted(evidence.device_digests, key=lambda d: (d.tenant_id, d.device_id, d.entity_type)):
        server = evidence.projection_digests.get(device.key, empty)
        compared += 1
        if device.digest != server:
            findings.append(
                Finding(
                    FindingKind.DIVERGED,
                    device.device_id,
                    f"{device.entity_type} v{device.version} of tenant {device.tenant_id}: device "
                    f"{device.digest[:12]} != projection {server[:12]}",
                )
            )
    if evidence.replay_digests is not None:
        for key in sorted(set(evidence.projection_digests) | set(evidence.replay_digests)):
            projected = evidence.projection_digests.get(key, empty)
            replayed = evidence.replay_digests.get(key, empty)
            compared += 1
            if projected != replayed:
                tenant, entity_type, version = key
                findings.append(
                    Finding(
                        FindingKind.DIVERGED,
                        f"tenant {tenant}",
                        f"{entity_type} v{version}: projection {projected[:12]} != clean replay {replayed[:12]}",
                    )
                )
    return findings, compared


def check(evidence: Evidence) -> CheckReport:
    """Judge the evidence; see the module docstring for what is checked."""
    findings = _acknowledged_findings(evidence)
    findings += _duplicate_findings(evidence)
    findings += _gap_findings(evidence)
    findings += _inversions(
        ((r.device_id, r.device_seq, r.topic, r.partition, r.log_offset) for r in evidence.applied if r.topic),
        "projection",
        first_only=False,
    )
    if evidence.log is not None:
        findings += _inversions(
            ((e.device_id, e.device_seq, e.topic, e.partition, e.offset) for e in evidence.log), "log", first_only=True
        )
    divergence, compared = _divergence_findings(evidence)
    findings += divergence
    acknowledged = {op.key for op in evidence.acknowledged}
    reporting = {op.device_id for op in evidence.acknowledged}
    unacknowledged = {row.key for row in evidence.applied if row.device_id in reporting and row.key not in acknowledged}
    return CheckReport(
        acknowledged=len(evidence.acknowledged),
        applied=len({row.key for row in evidence.applied}),
        log_records=len(evidence.log) if evidence.log is not None else None,
        digests_compared=compared,
        findings=tuple(findings),
        unacknowledged_applied=len(unacknowledged),
    )
