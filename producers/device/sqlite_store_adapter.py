"""The device store on SQLite (stdlib sqlite3): WAL journal, synchronous=FULL, one table per entity type.

`synchronous=FULL` makes every commit durable before it returns (a WAL commit survives power loss, not only
a process crash); transactions start with `BEGIN IMMEDIATE` so a writer never fails halfway on a lock
upgrade. Entity rows keep the merged state (fields with write stamps, tombstone, recent writes) as JSON
plus the visible values, so an app can read `entity_<type>.visible` directly.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from keel.errors import ConfigurationError, SequenceError
from producers.device.state_codec import dumps_event, dumps_state, loads_event, loads_state
from producers.device.store import LoggedOp, OpStatus, StoredEntity, StoreTransaction, raise_if_bad_entity_type
from schemas.envelope import ChangeEvent

__all__ = ["SqliteDeviceStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS op_log (
    seq           INTEGER PRIMARY KEY,
    event_id      TEXT NOT NULL UNIQUE,
    entity_type   TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    status        TEXT NOT NULL,
    code          TEXT,
    reason        TEXT,
    size_bytes    INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    event         TEXT NOT NULL,
    trace         TEXT
);
CREATE INDEX IF NOT EXISTS op_log_by_status ON op_log (status, seq);
CREATE INDEX IF NOT EXISTS op_log_by_entity ON op_log (entity_type, entity_id, seq);
"""
_LAST_SEQ = "store.last_logged_seq"
_OP_COLUMNS = "event, status, size_bytes, created_at_ms, reason, code, trace"


class _SqliteTransaction:
    """Statements on one connection inside BEGIN IMMEDIATE … COMMIT."""

    def __init__(self, connection: sqlite3.Connection, known_tables: set[str]) -> None:
        self._db = connection
        self._tables = known_tables

    def _table(self, entity_type: str) -> str:
        raise_if_bad_entity_type(entity_type)
        table = f"entity_{entity_type}"
        if table not in self._tables:
            # DDL is transactional in SQLite: a rolled-back transaction also forgets the table.
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("  # the name matched ENTITY_TYPE_PATTERN
                "entity_id TEXT PRIMARY KEY, is_alive INTEGER NOT NULL, visible TEXT, state TEXT NOT NULL)"
            )
            self._tables.add(table)
        return table

    def get_meta(self, key: str) -> str | None:
        """A metadata value."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value."""
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def load_entity(self, entity_type: str, entity_id: str) -> StoredEntity | None:
        """One entity."""
        table = self._table(entity_type)
        row = self._db.execute(
            f"SELECT entity_id, visible, state FROM {table} WHERE entity_id = ?",  # noqa: S608 - validated name
            (entity_id,),
        ).fetchone()
        return _entity(entity_type, row) if row else None

    def save_entity(self, entity: StoredEntity) -> None:
        """Insert or replace."""
        table = self._table(entity.entity_type)
        visible = json.dumps(dict(entity.visible), ensure_ascii=False) if entity.visible is not None else None
        self._db.execute(
            f"INSERT INTO {table} (entity_id, is_alive, visible, state) VALUES (?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT (entity_id) DO UPDATE SET is_alive = excluded.is_alive, visible = excluded.visible, "
            "state = excluded.state",
            (entity.entity_id, int(entity.visible is not None), visible, dumps_state(entity.state)),
        )

    def entities(self, entity_type: str) -> list[StoredEntity]:
        """Every entity of a type, in id order."""
        table = self._table(entity_type)
        rows = self._db.execute(f"SELECT entity_id, visible, state FROM {table} ORDER BY entity_id")  # noqa: S608
        return [_entity(entity_type, row) for row in rows]

    def last_logged_seq(self) -> int:
        """Highest seq ever logged (kept in meta so pruning the log can never lower it)."""
        stored = self.get_meta(_LAST_SEQ)
        return int(stored) if stored is not None else 0

    def append_op(self, event: ChangeEvent, size_bytes: int, created_at_ms: int, trace: str | None = None) -> None:
        """Add a pending op and raise the logged-seq counter in the same transaction."""
        last = self.last_logged_seq()
        if event.device_seq <= last:
            raise SequenceError(f"seq {event.device_seq} is not above the last logged seq {last}")
        self._db.execute(
            "INSERT INTO op_log (seq, event_id, entity_type, entity_id, status, size_bytes, created_at_ms, event, "
            "trace) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.device_seq,
                event.event_id,
                event.entity_type,
                event.entity_id,
                OpStatus.PENDING.value,
                size_bytes,
                created_at_ms,
                dumps_event(event),
                trace,
            ),
        )
        self.set_meta(_LAST_SEQ, str(event.device_seq))

    def ops(self, status: OpStatus, *, after_seq: int = 0, limit: int | None = None) -> list[LoggedOp]:
        """Ops in a status, seq order."""
        rows = self._db.execute(
            f"SELECT {_OP_COLUMNS} FROM op_log WHERE status = ? AND seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (status.value, after_seq, -1 if limit is None else limit),
        )
        return [_op(row) for row in rows]

    def ops_for_entity(self, entity_type: str, entity_id: str) -> list[LoggedOp]:
        """Every op of one entity."""
        rows = self._db.execute(
            f"SELECT {_OP_COLUMNS} FROM op_log WHERE entity_type = ? AND entity_id = ? ORDER BY seq",  # noqa: S608
            (entity_type, entity_id),
        )
        return [_op(row) for row in rows]

    def set_status(
        self, seqs: Sequence[int], status: OpStatus, *, reason: str | None = None, code: str | None = None
    ) -> None:
        """Move ops to a status."""
        self._db.executemany(
            "UPDATE op_log SET status = ?, reason = ?, code = ? WHERE seq = ?",
            [(status.value, reason, code, seq) for seq in seqs],
        )

    def count_ops(self, status: OpStatus) -> int:
        """How many ops in a status."""
        row = self._db.execute("SELECT count(*) FROM op_log WHERE status = ?", (status.value,)).fetchone()
        return int(row[0])


def _entity(entity_type: str, row: tuple[Any, ...]) -> StoredEntity:
    entity_id, visible, state = row
    return StoredEntity(
        loads_state(state, entity_type, entity_id), json.loads(visible) if visible is not None else None
    )


def _op(row: tuple[Any, ...]) -> LoggedOp:
    event, status, size_bytes, created_at_ms, reason, code, trace = row
    return LoggedOp(loads_event(event), OpStatus(status), int(size_bytes), int(created_at_ms), reason, code, trace)


class SqliteDeviceStore:
    """`DeviceStore` in one SQLite file; safe to share between threads (one writer at a time)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the module never opens transactions implicitly; we issue BEGIN/COMMIT ourselves.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._lock = threading.RLock()
        self._in_transaction = False
        self._closed = False
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(_SCHEMA)
        columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(op_log)")}
        if "trace" not in columns:  # a store created before ops kept their trace context
            self._db.execute("ALTER TABLE op_log ADD COLUMN trace TEXT")
        existing = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'entity_%'")
        self._tables = {str(name) for (name,) in existing}

    @contextmanager
    def _transaction(self) -> Iterator[StoreTransaction]:
        with self._lock:
            if self._closed:
                raise ConfigurationError(f"device store {self.path} is closed")
            if self._in_transaction:
                raise ConfigurationError("device store transactions do not nest")
            self._in_transaction = True
            tables_before = set(self._tables)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield _SqliteTransaction(self._db, self._tables)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    self._tables.intersection_update(tables_before)
                    raise
                self._db.execute("COMMIT")
            finally:
                self._in_transaction = False

    def transaction(self) -> AbstractContextManager[StoreTransaction]:
        """BEGIN IMMEDIATE … COMMIT (ROLLBACK if the block raises)."""
        return self._transaction()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __repr__(self) -> str:
        return f"SqliteDeviceStore({str(self.path)!r})"
