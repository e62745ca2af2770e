"""The local replica: ops captured atomically, seqs and clocks that only go up, merges equal to the server's."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from keel.errors import ConfigurationError, ValidationError
from keel.hlc import HlcTimestamp
from producers.device.replica import RepairSnapshot, Replica
from producers.device.sqlite_store_adapter import SqliteDeviceStore
from producers.device.store import InMemoryDeviceStore, OpStatus
from projections.conflict_rules import FieldState, WriteStamp, merge_events
from schemas.catalog import default_catalog
from schemas.envelope import ChangeEvent, Op, new_event_id

VERSIONS = {"task": [1, 2], "project": [1]}


class Wall:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def replica(
    store: InMemoryDeviceStore | SqliteDeviceStore | None = None, wall: Wall | None = None, device_id: str = "d-1"
) -> Replica:
    return Replica(
        store or InMemoryDeviceStore(),
        tenant_id="acme",
        device_id=device_id,
        supported_versions=VERSIONS,
        wall=wall or Wall(1_000_000),
    )


def remote(
    seq: int, entity_id: str, fields: dict[str, object], at: int, device: str = "d-9", op: Op = Op.UPSERT
) -> ChangeEvent:
    schema = default_catalog().schema("task", 2)
    payload = {spec.name: spec.default for spec in schema.fields} | fields if op is not Op.DELETE else None
    return ChangeEvent(
        event_id=new_event_id(),
        tenant_id="acme",
        device_id=device,
        device_seq=seq,
        entity_type="task",
        entity_id=entity_id,
        op=op,
        hlc=HlcTimestamp(at, 0, device),
        schema_version=2,
        payload=payload,
        changed_fields=tuple(sorted(fields)) if op is not Op.DELETE else (),
    )


def test_writes_get_increasing_seqs_clocks_and_the_previous_clock_as_base() -> None:
    local = replica()
    first = local.upsert("task", "t-1", {"title": "draft"})
    second = local.upsert("task", "t-1", {"priority": 2})
    third = local.delete("task", "t-1")
    assert [first.device_seq, second.device_seq, third.device_seq] == [1, 2, 3]
    assert first.hlc < second.hlc < third.hlc
    assert first.base_hlc is None
    assert second.base_hlc == first.hlc
    assert third.base_hlc == second.hlc
    assert second.changed_fields == ("priority",)
    assert second.payload is not None
    assert second.payload["title"] == "draft", "the payload carries the whole record, changed_fields what changed"
    assert third.payload is None
    assert local.get("task", "t-1") is None
    assert [op.seq for op in local.pending_batch(10, 10**6)] == [1, 2, 3]


def test_a_deleted_entity_can_be_created_again_with_fresh_defaults() -> None:
    local = replica()
    local.upsert("task", "t-1", {"title": "old", "priority": 3})
    local.delete("task", "t-1")
    local.upsert("task", "t-1", {"title": "new"})
    assert local.get("task", "t-1") == {
        "title": "new",
        "description": "",
        "due": None,
        "status": "TODO",
        "project_id": None,
        "priority": 0,
    }


@pytest.mark.parametrize(
    ("entity_type", "fields", "message"),
    [
        ("task", {"priority": 9}, "outside 0..3"),
        ("task", {"colour": "red"}, "no field 'colour'"),
        ("task", {"title": 5}, "not a valid string"),
        ("comment", {"body": "hi"}, "does not handle entity type 'comment'"),
        ("task", {}, "at least one field"),
    ],
)
def test_bad_writes_are_refused_at_once_and_log_nothing(
    entity_type: str, fields: dict[str, object], message: str
) -> None:
    local = replica()
    with pytest.raises(ValidationError, match=message):
        local.upsert(entity_type, "x", fields)
    assert local.count(OpStatus.PENDING) == 0


def test_seq_and_clock_survive_a_restart_even_when_the_wall_clock_goes_back(tmp_path: Path) -> None:
    wall = Wall(5_000_000)
    first = replica(SqliteDeviceStore(tmp_path / "d.db"), wall)
    before = first.upsert("task", "t-1", {"title": "a"})
    first.store.close()
    wall.now = 4_000_000  # the clock was set back while the app was closed
    second = replica(SqliteDeviceStore(tmp_path / "d.db"), wall)
    after = second.upsert("task", "t-1", {"title": "b"})
    second.store.close()
    assert after.device_seq == before.device_seq + 1
    assert after.hlc > before.hlc


def test_a_store_belongs_to_one_device() -> None:
    store = InMemoryDeviceStore()
    replica(store)
    with pytest.raises(ConfigurationError, match="belongs to device_id 'd-1'"):
        replica(InMemoryDeviceStore(store.backing), device_id="d-2")


def test_remote_changes_merge_like_the_server_in_any_order_and_only_once() -> None:
    events = [
        remote(1, "t-1", {"title": "a"}, 100, "d-7"),
        remote(1, "t-1", {"title": "b", "priority": 1}, 105, "d-8"),
        remote(2, "t-1", {"priority": 3}, 103, "d-7"),
        remote(2, "t-1", {}, 104, "d-8", op=Op.DELETE),
        remote(3, "t-1", {"description": "back"}, 110, "d-8"),
    ]
    server = merge_events(events).state
    for attempt in range(5):
        order = list(events)
        random.Random(attempt).shuffle(order)
        local = replica()
        local.apply_remote(order[:3], "1.3")
        local.apply_remote(order[3:], "1.5")
        local.apply_remote(order, "1.5")  # a page applied again after a crash changes nothing
        state = local.state("task", "t-1")
        assert state is not None
        assert (state.fields, state.deleted) == (server.fields, server.deleted)
        assert local.cursor == "1.5"


def test_received_clocks_push_the_local_clock_forward() -> None:
    local = replica(wall=Wall(1_000))
    local.apply_remote([remote(1, "t-1", {"title": "from the future"}, 9_000_000)], "1.1")
    mine = local.upsert("task", "t-1", {"title": "mine"})
    assert mine.hlc.physical_ms >= 9_000_000
    assert mine.base_hlc == HlcTimestamp(9_000_000, 0, "d-9")
    current = local.get("task", "t-1")
    assert current is not None
    assert current["title"] == "mine"


def test_the_handshake_records_versions_and_the_clock_offset() -> None:
    local = replica(wall=Wall(10_000))
    report = local.record_handshake(
        {"task": 1, "comment": 1}, server_time_ms=12_050, sent_at_ms=10_000, received_at_ms=10_100
    )
    assert (report.offset_ms, report.rtt_ms) == (2_000, 100)
    assert local.negotiated_versions == {"task": 1}
    assert local.local_version("task") == 1
    assert local.clock_report().offset_ms == 2_000
    assert local.upsert("task", "t-1", {"notes": "v1 speaks notes"}).schema_version == 1


def test_acknowledgements_mark_sent_quarantine_rejections_and_requeue_lost_ops() -> None:
    local = replica()
    for n in range(5):
        local.upsert("task", f"t-{n}", {"title": str(n)})
    outcome = local.record_acknowledgement([1, 2, 3, 4], 3, {2: ("invalid", "priority is 9")})
    assert (outcome.sent, outcome.quarantined) == (2, 1)
    assert [op.seq for op in local.pending_batch(10, 10**6)] == [4, 5]
    [bad] = local.quarantined()
    assert (bad.seq, bad.code, bad.reason) == (2, "invalid", "priority is 9")
    assert local.acked_seq() == 3
    assert local.requeue_from(3) == 1
    assert [op.seq for op in local.pending_batch(10, 10**6)] == [3, 4, 5]


def test_batches_respect_the_byte_limit_but_always_carry_one_op() -> None:
    local = replica()
    for n in range(4):
        local.upsert("task", f"t-{n}", {"title": "x" * 200})
    size = local.pending_batch(1, 10**6)[0].size_bytes
    assert [op.seq for op in local.pending_batch(10, size * 2 + 1)] == [1, 2]
    assert [op.seq for op in local.pending_batch(10, 1)] == [1]


def test_a_seq_floor_from_the_gateway_is_never_allocated_again() -> None:
    local = replica()
    local.raise_seq_floor(41)
    assert local.upsert("task", "t-1", {"title": "x"}).device_seq == 42


def test_repair_replaces_diverged_rows_and_merges_the_devices_own_writes_back() -> None:
    local = replica(wall=Wall(2_000))
    local.upsert("task", "t-1", {"title": "mine, acknowledged", "priority": 1})
    local.record_acknowledgement([1], 1, {})
    local.upsert("task", "t-1", {"description": "mine, unsent"})
    # A row that diverged silently: a newer stamp than the server's but a value the server never had.
    local.apply_remote([remote(1, "t-2", {"title": "bogus"}, 1_800)], "1.1")
    older = WriteStamp(1_500, 0, 0, "d-9", new_event_id())
    local.repair(
        [
            RepairSnapshot("task", "t-1", {"title": FieldState("server", older), "priority": FieldState(2, older)}),
            RepairSnapshot("task", "t-2", {"title": FieldState("server", older)}),
            RepairSnapshot("task", "t-gone", None),
        ]
    )
    first, second = local.get("task", "t-1"), local.get("task", "t-2")
    assert first is not None
    assert second is not None
    assert (first["title"], first["priority"], first["description"]) == ("mine, acknowledged", 1, "mine, unsent")
    assert second["title"] == "server", "a join would have kept the bogus value; a repair replaces it"
    assert local.get("task", "t-gone") is None


def test_a_page_that_touches_entities_many_times_stores_what_one_change_per_page_stores(tmp_path: Path) -> None:
    rng = random.Random(3)
    events = [
        remote(seq, f"t-{rng.randrange(4)}", {"title": f"v{seq}", "priority": rng.randrange(4)}, 100 + seq, "d-7")
        for seq in range(1, 40)
    ]
    events.append(remote(40, "t-1", {}, 200, "d-7", op=Op.DELETE))
    one_page = replica(SqliteDeviceStore(tmp_path / "page.db"))
    one_by_one = replica(SqliteDeviceStore(tmp_path / "single.db"))
    try:
        assert one_page.apply_remote(events, "1.40") == len(events)
        for index, event in enumerate(events):
            one_by_one.apply_remote([event], f"1.{index + 1}")
        for entity_id in ("t-0", "t-1", "t-2", "t-3"):
            assert one_page.state("task", entity_id) == one_by_one.state("task", entity_id)
            assert one_page.get("task", entity_id) == one_by_one.get("task", entity_id)
        assert one_page.cursor == one_by_one.cursor == "1.40"
    finally:
        one_page.store.close()
        one_by_one.store.close()
