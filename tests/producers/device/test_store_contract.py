"""One contract, three device stores: the in-memory fake, SQLite and encrypted SQLite behave alike (atomic,
durable, ordered)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keel.errors import ConfigurationError, SequenceError
from keel.hlc import HlcTimestamp
from producers.device.encrypted_store_adapter import EncryptedSqliteDeviceStore
from producers.device.sqlite_store_adapter import SqliteDeviceStore
from producers.device.store import DeviceStore, InMemoryDeviceStore, OpStatus, StoredEntity
from projections.conflict_rules import apply_event
from schemas.envelope import ChangeEvent, Op, new_event_id

Reopen = Callable[[], DeviceStore]


@pytest.fixture(params=["memory", "sqlite", "encrypted"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Reopen]:
    """A factory that opens the same store again (a restart)."""
    opened: list[DeviceStore] = []
    if request.param == "memory":
        backing = InMemoryDeviceStore().backing

        def factory() -> DeviceStore:
            store = InMemoryDeviceStore(backing)
            opened.append(store)
            return store
    elif request.param == "sqlite":

        def factory() -> DeviceStore:
            store = SqliteDeviceStore(tmp_path / "device.db")
            opened.append(store)
            return store
    else:

        def factory() -> DeviceStore:
            # A low scrypt cost keeps the suite fast; the default is 2**15.
            store = EncryptedSqliteDeviceStore(tmp_path / "device.db", passphrase="correct horse", scrypt_n=2**10)
            opened.append(store)
            return store

    yield factory
    for store in opened:
        store.close()


def event(seq: int, entity_id: str = "t-1", title: str = "x") -> ChangeEvent:
    return ChangeEvent(
        event_id=new_event_id(),
        tenant_id="acme",
        device_id="d-1",
        device_seq=seq,
        entity_type="task",
        entity_id=entity_id,
        op=Op.UPSERT,
        hlc=HlcTimestamp(1_000 + seq, 0, "d-1"),
        schema_version=2,
        payload={"title": title},
        changed_fields=("title",),
    )


def entity_of(change: ChangeEvent) -> StoredEntity:
    state = apply_event(None, change).state
    return StoredEntity(state, {"title": change.payload["title"] if change.payload else ""})


def test_a_write_and_its_op_commit_together_and_survive_a_reopen(reopen: Reopen) -> None:
    store = reopen()
    change = event(1)
    with store.transaction() as tx:
        tx.save_entity(entity_of(change))
        tx.append_op(change, 120, 5)
        tx.set_meta("clock.hlc", change.hlc.encode())
    store.close()
    again = reopen()
    with again.transaction() as tx:
        found = tx.load_entity("task", "t-1")
        assert found is not None
        assert found.visible == {"title": "x"}
        assert found.state.fields["title"].value == "x"
        [logged] = tx.ops(OpStatus.PENDING)
        assert logged.event == change
        assert (logged.size_bytes, logged.created_at_ms) == (120, 5)
        assert tx.get_meta("clock.hlc") == change.hlc.encode()
        assert tx.last_logged_seq() == 1


def test_a_failed_transaction_leaves_nothing_behind(reopen: Reopen) -> None:
    store = reopen()
    change = event(1)

    def write_then_fail() -> None:
        with store.transaction() as tx:
            tx.save_entity(entity_of(change))
            tx.append_op(change, 100, 1)
            tx.set_meta("pull.cursor", "7.7")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    with store.transaction() as tx:
        assert tx.load_entity("task", "t-1") is None
        assert tx.ops(OpStatus.PENDING) == []
        assert tx.get_meta("pull.cursor") is None
        assert tx.last_logged_seq() == 0


def test_seqs_only_go_up_and_are_never_reused(reopen: Reopen) -> None:
    store = reopen()
    with store.transaction() as tx:
        tx.append_op(event(1), 10, 1)
        tx.append_op(event(2), 10, 1)
    with store.transaction() as tx, pytest.raises(SequenceError):
        tx.append_op(event(2), 10, 1)
    with store.transaction() as tx:
        tx.set_status([1, 2], OpStatus.SENT)
    with store.transaction() as tx, pytest.raises(SequenceError):
        tx.append_op(event(1), 10, 1)
    store.close()
    with reopen().transaction() as tx:
        assert tx.last_logged_seq() == 2


def test_ops_are_listed_by_status_in_seq_order_with_reasons(reopen: Reopen) -> None:
    store = reopen()
    with store.transaction() as tx:
        for seq in range(1, 6):
            tx.append_op(event(seq, entity_id=f"t-{seq % 2}"), 10 * seq, seq)
        tx.set_status([2], OpStatus.QUARANTINED, reason="priority is 9, outside 0..3", code="invalid")
        tx.set_status([1], OpStatus.SENT)
    with store.transaction() as tx:
        assert [op.seq for op in tx.ops(OpStatus.PENDING)] == [3, 4, 5]
        assert [op.seq for op in tx.ops(OpStatus.PENDING, after_seq=3, limit=1)] == [4]
        [quarantined] = tx.ops(OpStatus.QUARANTINED)
        assert (quarantined.seq, quarantined.code, quarantined.reason) == (2, "invalid", "priority is 9, outside 0..3")
        assert tx.count_ops(OpStatus.SENT) == 1
        assert [op.seq for op in tx.ops_for_entity("task", "t-1")] == [1, 3, 5]


def test_entities_are_listed_per_type_in_id_order(reopen: Reopen) -> None:
    store = reopen()
    with store.transaction() as tx:
        for entity_id in ("b", "a", "c"):
            tx.save_entity(entity_of(event(1, entity_id=entity_id, title=entity_id)))
    with store.transaction() as tx:
        assert [e.entity_id for e in tx.entities("task")] == ["a", "b", "c"]
        assert tx.entities("project") == []


def test_bad_entity_type_names_and_nested_transactions_are_refused(reopen: Reopen) -> None:
    store = reopen()
    with store.transaction() as tx, pytest.raises(ConfigurationError, match="must match"):
        tx.load_entity("task; DROP TABLE op_log", "x")
    with store.transaction(), pytest.raises(ConfigurationError, match="do not nest"), store.transaction():
        pass


def test_an_op_keeps_the_trace_context_of_its_capture_across_status_changes_and_reopens(reopen: Reopen) -> None:
    store = reopen()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with store.transaction() as tx:
        tx.append_op(event(1), 10, 1, trace=traceparent)
        tx.append_op(event(2), 10, 1)
    with store.transaction() as tx:
        tx.set_status([1], OpStatus.QUARANTINED, reason="refused", code="invalid")
    store.close()
    with reopen().transaction() as tx:
        (quarantined,) = tx.ops(OpStatus.QUARANTINED)
        (pending,) = tx.ops(OpStatus.PENDING)
    assert (quarantined.trace, quarantined.reason) == (traceparent, "refused")
    assert pending.trace is None


def test_a_store_file_from_before_traces_gains_the_column_on_open(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE op_log (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, entity_type TEXT NOT NULL, "
        "entity_id TEXT NOT NULL, status TEXT NOT NULL, code TEXT, reason TEXT, size_bytes INTEGER NOT NULL, "
        "created_at_ms INTEGER NOT NULL, event TEXT NOT NULL);"
    )
    old.close()
    store = SqliteDeviceStore(path)
    try:
        with store.transaction() as tx:
            tx.append_op(event(1), 10, 1, trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        with store.transaction() as tx:
            assert [op.trace for op in tx.ops(OpStatus.PENDING)] == [
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ]
    finally:
        store.close()
