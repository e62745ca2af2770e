"""The consistency checker on constructed evidence: each kind of violation is found, clean evidence passes."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.verification.checker import (
    AckedOp,
    AppliedOp,
    DeviceDigest,
    Evidence,
    FindingKind,
    LogEntry,
    check,
    op_fingerprint,
    seq_ranges,
)
from projections.digest import empty_digest
from tests.consumers.helpers import EventFactory

TOPIC = "demo.task.changes"


def acked(device: str, seqs: range | list[int]) -> list[AckedOp]:
    return [AckedOp(device, seq, f"{device}-e{seq}", f"fp-{device}-{seq}") for seq in seqs]


def applied(device: str, seqs: range | list[int], partition: int = 0, first_offset: int = 0) -> list[AppliedOp]:
    return [
        AppliedOp(device, seq, f"{device}-e{seq}", TOPIC, partition, first_offset + i) for i, seq in enumerate(seqs)
    ]


def logged(device: str, seqs: range | list[int], partition: int = 0, first_offset: int = 0) -> list[LogEntry]:
    return [
        LogEntry(device, seq, f"{device}-e{seq}", f"fp-{device}-{seq}", TOPIC, partition, first_offset + i)
        for i, seq in enumerate(seqs)
    ]


def clean() -> Evidence:
    ops = acked("d1", range(1, 6)) + acked("d2", range(1, 4))
    rows = applied("d1", range(1, 6)) + applied("d2", range(1, 4), partition=1)
    log = logged("d1", range(1, 6)) + logged("d2", range(1, 4), partition=1)
    digests = [DeviceDigest("d1", "acme", "task", 2, "aaa"), DeviceDigest("d2", "acme", "task", 1, "bbb")]
    server = {("acme", "task", 2): "aaa", ("acme", "task", 1): "bbb"}
    return Evidence(
        acknowledged=ops,
        applied=rows,
        feed_event_ids=[row.event_id for row in rows],
        log=log,
        device_digests=digests,
        projection_digests=server,
        replay_digests=dict(server),
    )


def test_clean_evidence_has_no_finding() -> None:
    report = check(clean())
    assert report.ok, report.summary()
    assert (report.acknowledged, report.applied, report.log_records) == (8, 8, 8)
    assert report.digests_compared == 4
    assert (report.lost, report.duplicated, report.diverged) == (0, 0, False)
    assert report.as_json()["ok"] is True


def test_an_acknowledged_op_that_is_not_applied_is_lost_and_the_log_says_where_it_stopped() -> None:
    evidence = clean()
    rows = [r for r in evidence.applied if r.key not in {("d1", 5), ("d2", 3)}]
    log = [e for e in evidence.log or () if e.key != ("d2", 3)]
    report = check(dataclasses.replace(evidence, applied=rows, log=log, feed_event_ids=None))
    lost = report.of(FindingKind.LOST)
    assert [(f.subject, f.detail) for f in lost] == [
        ("d1", "seq 5 (d1-e5); it is in the log, unprojected"),
        ("d2", "seq 3 (d2-e3); it is not in the log either"),
    ]
    assert report.lost == 2
    assert [f.subject for f in report.of(FindingKind.MISSING_FROM_LOG)] == ["d2"]
    assert not report.ok


def test_another_event_under_an_acknowledged_key_is_an_altered_op() -> None:
    evidence = clean()
    rows = [r if r.key != ("d1", 2) else dataclasses.replace(r, event_id="intruder") for r in evidence.applied]
    report = check(dataclasses.replace(evidence, applied=rows, feed_event_ids=None))
    altered = report.of(FindingKind.ALTERED)
    assert [f.detail for f in altered] == ["seq 2: acknowledged as d1-e2, applied as intruder"]
    assert report.lost == 1


def test_other_content_under_an_acknowledged_event_id_in_the_log_is_altered() -> None:
    evidence = clean()
    log = [e if e.key != ("d2", 1) else dataclasses.replace(e, fingerprint="tampered") for e in evidence.log or ()]
    report = check(dataclasses.replace(evidence, log=log))
    assert [f.detail for f in report.of(FindingKind.ALTERED)] == [
        "seq 1 (d2-e1): the log holds other content under this event id"
    ]


@pytest.mark.parametrize("where", ["dedup", "feed"])
def test_an_op_applied_twice_is_a_duplicate(where: str) -> None:
    evidence = clean()
    if where == "dedup":
        # The same event applied under a second key (a dedup table that did not hold).
        rows = [*evidence.applied, AppliedOp("d1", 6, "d1-e3", TOPIC, 0, 5)]
        changed = dataclasses.replace(evidence, applied=rows, acknowledged=[*evidence.acknowledged, *acked("d1", [6])])
    else:
        changed = dataclasses.replace(evidence, feed_event_ids=[*(evidence.feed_event_ids or ()), "d2-e2", "d2-e2"])
    report = check(changed)
    duplicated = report.of(FindingKind.DUPLICATED)
    assert len(duplicated) == 1
    assert report.duplicated == (1 if where == "dedup" else 2)
    assert ("d1-e3" if where == "dedup" else "d2-e2") in duplicated[0].detail


def test_a_missing_seq_is_a_gap_unless_it_was_consumed_without_an_event() -> None:
    evidence = clean()
    rows = [r for r in evidence.applied if r.key not in {("d1", 2), ("d1", 3)}]
    ops = [op for op in evidence.acknowledged if op.key not in {("d1", 2), ("d1", 3)}]
    report = check(dataclasses.replace(evidence, applied=rows, acknowledged=ops, feed_event_ids=None))
    gaps = report.of(FindingKind.SEQ_GAP)
    assert [(f.subject, f.detail, f.count) for f in gaps] == [("d1", "seqs 2-3 missing below applied seq 5", 2)]
    rejected = check(
        dataclasses.replace(
            evidence,
            applied=rows,
            acknowledged=ops,
            feed_event_ids=None,
            consumed_without_event={"d1": frozenset({2, 3})},
        )
    )
    assert rejected.of(FindingKind.SEQ_GAP) == []


def test_seqs_going_down_along_a_partition_are_inversions_but_later_copies_are_not() -> None:
    evidence = clean()
    swapped = [
        dataclasses.replace(r, log_offset={2: 3, 3: 2}.get(r.device_seq, r.log_offset)) if r.device_id == "d1" else r
        for r in evidence.applied
    ]
    report = check(dataclasses.replace(evidence, applied=swapped))
    assert [f.detail for f in report.of(FindingKind.SEQ_INVERSION)] == [
        f"projection {TOPIC}[0]: seq 2 at offset 3 after seq 3 at offset 2"
    ]
    # A resend after a gateway crash puts copies of seqs 4 and 5 after them: redeliveries, not inversions.
    copies = [*(evidence.log or ()), *logged("d1", [4, 5], first_offset=5), *logged("d1", [6], first_offset=7)]
    resent = check(dataclasses.replace(evidence, log=copies))
    assert resent.of(FindingKind.SEQ_INVERSION) == []
    out_of_order = [*(evidence.log or ()), *logged("d1", [7, 6], first_offset=5)]
    inverted = check(dataclasses.replace(evidence, log=out_of_order))
    assert [f.detail for f in inverted.of(FindingKind.SEQ_INVERSION)] == [
        f"log {TOPIC}[0]: seq 6 at offset 6 after seq 7 at offset 5"
    ]


def test_digests_that_differ_on_any_side_are_divergence() -> None:
    evidence = clean()
    device_off = [dataclasses.replace(d, digest="zzz") if d.device_id == "d2" else d for d in evidence.device_digests]
    report = check(dataclasses.replace(evidence, device_digests=device_off))
    assert [f.subject for f in report.of(FindingKind.DIVERGED)] == ["d2"]
    assert report.diverged
    replay_off = dict(evidence.replay_digests or {})
    replay_off[("acme", "task", 2)] = "yyy"
    replay_report = check(dataclasses.replace(evidence, replay_digests=replay_off))
    assert [f.subject for f in replay_report.of(FindingKind.DIVERGED)] == ["tenant acme"]


def test_a_digest_missing_on_one_side_is_an_empty_table() -> None:
    device = DeviceDigest("d3", "globex", "comment", 1, empty_digest())
    evidence = Evidence(acknowledged=[], applied=[], device_digests=[device], projection_digests={}, replay_digests={})
    assert check(evidence).ok
    nonempty = dataclasses.replace(device, digest="abc")
    assert check(dataclasses.replace(evidence, device_digests=[nonempty])).diverged


def test_applied_ops_a_device_never_heard_acknowledged_are_counted_but_not_a_violation() -> None:
    evidence = clean()
    rows = [*evidence.applied, *applied("d1", [6], first_offset=5)]
    report = check(dataclasses.replace(evidence, applied=rows, feed_event_ids=None))
    assert report.ok
    assert report.unacknowledged_applied == 1


def test_the_fingerprint_survives_an_upcast_and_changes_with_the_identity() -> None:
    factory = EventFactory(seed=3)
    event = factory.event("d1", "t-1", version=2, title="x", priority=1)
    upcast = event.with_payload({"title": "x", "priority": 1, "labels": []}, ("title", "priority"), 3)
    assert op_fingerprint(upcast) == op_fingerprint(event)
    assert op_fingerprint(dataclasses.replace(event, device_seq=9)) != op_fingerprint(event)
    signed = dataclasses.replace(event, hash=bytes.fromhex("ab" * 32))
    assert op_fingerprint(signed) == "ab" * 32


def test_seq_ranges_read_like_a_person_writes_them() -> None:
    assert seq_ranges([9, 3, 4, 5, 11, 12]) == "3-5, 9, 11-12"
    assert seq_ranges([]) == ""
