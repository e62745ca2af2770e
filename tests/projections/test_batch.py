"""The pure parts of a batch: dedup classification and the merge into states, decisions and outbox rows."""

from __future__ import annotations

from projections.batch import (
    Rejection,
    SourcedEvent,
    SourcePosition,
    merge_batch,
    rejection_entries,
    split_by_dedup,
)
from projections.outbox import OutboxKind
from schemas.envelope import ChangeEvent
from tests.consumers.helpers import EventFactory


def sourced(event: ChangeEvent, offset: int, cautions: tuple[str, ...] = ()) -> SourcedEvent:
    return SourcedEvent(event, SourcePosition("k.task.changes", 0, offset), 1, cautions)


def test_redeliveries_are_duplicates_and_reused_seqs_are_replays() -> None:
    factory = EventFactory()
    first = factory.event("dev-a", "t1", title="a")
    other = factory.event("dev-a", "t2", seq=first.device_seq, title="reuses seq 1")
    fresh = factory.event("dev-b", "t1", title="b")
    split = split_by_dedup(
        [sourced(first, 0), sourced(first, 1), sourced(other, 2), sourced(fresh, 3)],
        known={},
    )
    assert [s.position.offset for s in split.fresh] == [0, 3]
    assert [s.position.offset for s in split.duplicates] == [1]
    assert [s.position.offset for s in split.replayed] == [2]
    again = split_by_dedup([sourced(first, 4)], known={first.dedup_key: first.event_id})
    assert (len(again.fresh), len(again.duplicates)) == (0, 1)


def test_merge_writes_one_feed_row_per_change_and_notices_only_for_the_loser() -> None:
    factory = EventFactory()
    a = factory.event("dev-a", "t1", title="from a")
    b = factory.event("dev-b", "t1", title="from b")  # concurrent (no base): a conflict
    merged = merge_batch({}, [sourced(a, 0, ("due: not a date",)), sourced(b, 1)])
    kinds = [(e.kind, e.device_id) for e in merged.outbox]
    assert kinds == [
        (OutboxKind.CHANGE, None),
        (OutboxKind.CAUTION, "dev-a"),
        (OutboxKind.CHANGE, None),
        (OutboxKind.CONFLICT, "dev-a"),
    ]
    (decision,) = merged.decisions
    assert (decision.winner_device_id, decision.loser_device_id) == ("dev-b", "dev-a")
    change = merged.outbox[0].body
    assert change["payload"] == {"title": "from a"}
    assert change["hlc"] == {"physical_ms": a.hlc.physical_ms, "logical": 0, "node": "dev-a"}
    state = merged.states[("task", "tenant-a", "t1")]
    assert state.visible({"title": ""}) == {"title": "from b"}


def test_rejections_reach_the_device_only_when_the_envelope_named_it() -> None:
    position = SourcePosition("k.task.changes", 1, 9)
    entries = rejection_entries(
        [
            Rejection(position, "DecodeError", "bad magic byte"),
            Rejection(position, "ValidationError", "priority 9", "tenant-a", "dev-a", "ev-1", "task", "t1"),
        ]
    )
    (entry,) = entries
    assert (entry.kind, entry.device_id, entry.body["reason"]) == (OutboxKind.REJECTED, "dev-a", "priority 9")
