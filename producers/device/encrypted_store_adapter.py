"""The device store on SQLite with every user value encrypted (AES-256-GCM): a drop-in `DeviceStore`.

For devices whose disk may be read by someone else (docs/security.md, "Encryption at rest").

What is encrypted: metadata values (device secret, signing key, cursor, clock…), each op (the event, its
quarantine reason and trace) and each entity (its id, visible values and merged state). Each value is sealed
with a fresh 96-bit nonce and its *location* as associated data (table, column and row key), so a value
moved to another row fails authentication. Rows are found by keyed hashes (HMAC-SHA-256) of entity ids,
never by the ids themselves. What stays readable: seqs, op statuses, sizes and times, row counts, entity
type names and metadata key names — structure, not content.

Keys: 64 bytes derived with scrypt from a passphrase and a random per-store salt (or given directly, e.g.
from the OS keyring), split into an encryption key and a MAC key. The store keeps the salt, the scrypt cost
and an encrypted check value; a wrong key fails at open with `WrongKeyError` (permanent, no retry), before
anything is read. A value that fails authentication under the right key raises `IntegrityError` (the file
was altered). Same WAL / synchronous=FULL / BEGIN IMMEDIATE durability as `sqlite_store_adapter.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keel.errors import ConfigurationError, IntegrityError, SequenceError, WrongKeyError
from producers.device.state_codec import dumps_event, dumps_state, loads_event, loads_state
from producers.device.store import LoggedOp, OpStatus, StoredEntity, StoreTransaction, raise_if_bad_entity_type
from schemas.envelope import ChangeEvent

__all__ = ["DEFAULT_SCRYPT_N", "EncryptedSqliteDeviceStore", "StoreKeys"]

DEFAULT_SCRYPT_N = 2**15  # ~32 MiB and ~0.1 s per open: affordable once per app start, costly per guess
_CHECK = b"keel-device-store-v1"
_NONCE = 12
_LAST_SEQ = "store.last_logged_seq"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keel_crypto (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    version   INTEGER NOT NULL,
    salt      BLOB NOT NULL,
    scrypt_n  INTEGER NOT NULL,
    scrypt_r  INTEGER NOT NULL,
    scrypt_p  INTEGER NOT NULL,
    check_box BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS op_log (
    seq           INTEGER PRIMARY KEY,
    entity_type   TEXT NOT NULL,
    entity_mac    BLOB NOT NULL,
    status        TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    event         BLOB NOT NULL,
    note          BLOB
);
CREATE INDEX IF NOT EXISTS op_log_by_status ON op_log (status, seq);
CREATE INDEX IF NOT EXISTS op_log_by_entity ON op_log (entity_type, entity_mac, seq);
CREATE TABLE IF NOT EXISTS entities (
    entity_type TEXT NOT NULL,
    entity_mac  BLOB NOT NULL,
    body        BLOB NOT NULL,
    PRIMARY KEY (entity_type, entity_mac)
);
"""


@dataclass(frozen=True)
class StoreKeys:
    """The two keys of a store: AES-256-GCM for values, HMAC-SHA-256 for row lookups."""

    encryption: bytes
    mac: bytes

    @classmethod
    def from_master(cls, master: bytes) -> StoreKeys:
        """Split 64 bytes of key material (ConfigurationError for any other length)."""
        if len(master) != 64:
            raise ConfigurationError(f"a device store key is 64 bytes, not {len(master)}")
        return cls(master[:32], master[32:])

    @classmethod
    def from_passphrase(cls, passphrase: str, salt: bytes, *, n: int, r: int = 8, p: int = 1) -> StoreKeys:
        """Keys derived from a passphrase with scrypt (RFC 7914)."""
        if not passphrase:
            raise ConfigurationError("the device store passphrase is empty")
        return cls.from_master(Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase.encode()))


class _Box:
    """Seals and opens values bound to their location."""

    def __init__(self, keys: StoreKeys) -> None:
        self._aead = AESGCM(keys.encryption)
        self._mac = keys.mac

    def seal(self, plaintext: bytes, where: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, where.encode())

    def open(self, sealed: bytes, where: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], where.encode())
        except InvalidTag as error:
            raise IntegrityError(f"device store value at {where} fails authentication: the file was altered") from error

    def seal_text(self, text: str, where: str) -> bytes:
        return self.seal(text.encode(), where)

    def open_text(self, sealed: bytes, where: str) -> str:
        return self.open(sealed, where).decode()

    def mac(self, *parts: str) -> bytes:
        return hmac.new(self._mac, "\x00".join(parts).encode(), hashlib.sha256).digest()


class _EncryptedTransaction:
    """Statements on one connection inside BEGIN IMMEDIATE … COMMIT, values sealed and opened on the way."""

    def __init__(self, connection: sqlite3.Connection, box: _Box) -> None:
        self._db = connection
        self._box = box

    def get_meta(self, key: str) -> str | None:
        """A metadata value."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return self._box.open_text(bytes(row[0]), f"meta|{key}") if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value."""
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, self._box.seal_text(value, f"meta|{key}")),
        )

    def _entity_mac(self, entity_type: str, entity_id: str) -> bytes:
        raise_if_bad_entity_type(entity_type)
        return self._box.mac("entity", entity_type, entity_id)

    def _entity(self, entity_type: str, mac: bytes, body: bytes) -> StoredEntity:
        raw = json.loads(self._box.open(body, f"entities|{entity_type}|{mac.hex()}"))
        visible = raw["visible"]
        return StoredEntity(loads_state(raw["state"], entity_type, raw["entity_id"]), visible)

    def load_entity(self, entity_type: str, entity_id: str) -> StoredEntity | None:
        """One entity."""
        mac = self._entity_mac(entity_type, entity_id)
        row = self._db.execute(
            "SELECT body FROM entities WHERE entity_type = ? AND entity_mac = ?", (entity_type, mac)
        ).fetchone()
        return self._entity(entity_type, mac, bytes(row[0])) if row else None

    def save_entity(self, entity: StoredEntity) -> None:
        """Insert or replace."""
        mac = self._entity_mac(entity.entity_type, entity.entity_id)
        body = json.dumps(
            {
                "entity_id": entity.entity_id,
                "visible": dict(entity.visible) if entity.visible is not None else None,
                "state": dumps_state(entity.state),
            },
            ensure_ascii=False,
        )
        sealed = self._box.seal_text(body, f"entities|{entity.entity_type}|{mac.hex()}")
        self._db.execute(
            "INSERT INTO entities (entity_type, entity_mac, body) VALUES (?, ?, ?) "
            "ON CONFLICT (entity_type, entity_mac) DO UPDATE SET body = excluded.body",
            (entity.entity_type, mac, sealed),
        )

    def entities(self, entity_type: str) -> list[StoredEntity]:
        """Every entity of a type, in id order (decrypted, then sorted: the ids are not in the clear)."""
        raise_if_bad_entity_type(entity_type)
        rows = self._db.execute("SELECT entity_mac, body FROM entities WHERE entity_type = ?", (entity_type,))
        found = [self._entity(entity_type, bytes(mac), bytes(body)) for mac, body in rows]
        return sorted(found, key=lambda entity: entity.entity_id)

    def last_logged_seq(self) -> int:
        """Highest seq ever logged."""
        stored = self.get_meta(_LAST_SEQ)
        return int(stored) if stored is not None else 0

    def append_op(self, event: ChangeEvent, size_bytes: int, created_at_ms: int, trace: str | None = None) -> None:
        """Add a pending op and raise the logged-seq counter in the same transaction."""
        last = self.last_logged_seq()
        if event.device_seq <= last:
            raise SequenceError(f"seq {event.device_seq} is not above the last logged seq {last}")
        seq = event.device_seq
        self._db.execute(
            "INSERT INTO op_log (seq, entity_type, entity_mac, status, size_bytes, created_at_ms, event, note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                event.entity_type,
                self._entity_mac(event.entity_type, event.entity_id),
                OpStatus.PENDING.value,
                size_bytes,
                created_at_ms,
                self._box.seal_text(dumps_event(event), f"op_log|event|{seq}"),
                self._note(seq, None, None, trace),
            ),
        )
        self.set_meta(_LAST_SEQ, str(seq))

    def _note(self, seq: int, reason: str | None, code: str | None, trace: str | None) -> bytes:
        body = json.dumps({"reason": reason, "code": code, "trace": trace}, ensure_ascii=False)
        return self._box.seal_text(body, f"op_log|note|{seq}")

    def _op(self, row: tuple[Any, ...]) -> LoggedOp:
        seq, status, size_bytes, created_at_ms, event, note = row
        extra = json.loads(self._box.open(bytes(note), f"op_log|note|{seq}")) if note is not None else {}
        return LoggedOp(
            loads_event(self._box.open_text(bytes(event), f"op_log|event|{seq}")),
            OpStatus(status),
            int(size_bytes),
            int(created_at_ms),
            extra.get("reason"),
            extra.get("code"),
            extra.get("trace"),
        )

    def ops(self, status: OpStatus, *, after_seq: int = 0, limit: int | None = None) -> list[LoggedOp]:
        """Ops in a status, seq order."""
        rows = self._db.execute(
            "SELECT seq, status, size_bytes, created_at_ms, event, note FROM op_log "
            "WHERE status = ? AND seq > ? ORDER BY seq LIMIT ?",
            (status.value, after_seq, -1 if limit is None else limit),
        )
        return [self._op(row) for row in rows]

    def ops_for_entity(self, entity_type: str, entity_id: str) -> list[LoggedOp]:
        """Every op of one entity."""
        rows = self._db.execute(
            "SELECT seq, status, size_bytes, created_at_ms, event, note FROM op_log "
            "WHERE entity_type = ? AND entity_mac = ? ORDER BY seq",
            (entity_type, self._entity_mac(entity_type, entity_id)),
        )
        return [self._op(row) for row in rows]

    def set_status(
        self, seqs: Sequence[int], status: OpStatus, *, reason: str | None = None, code: str | None = None
    ) -> None:
        """Move ops to a status (the note keeps the trace, takes the reason and code)."""
        for seq in seqs:
            row = self._db.execute("SELECT note FROM op_log WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                continue
            old = json.loads(self._box.open(bytes(row[0]), f"op_log|note|{seq}")) if row[0] is not None else {}
            self._db.execute(
                "UPDATE op_log SET status = ?, note = ? WHERE seq = ?",
                (status.value, self._note(seq, reason, code, old.get("trace")), seq),
            )

    def count_ops(self, status: OpStatus) -> int:
        """How many ops in a status."""
        row = self._db.execute("SELECT count(*) FROM op_log WHERE status = ?", (status.value,)).fetchone()
        return int(row[0])


class EncryptedSqliteDeviceStore:
    """`DeviceStore` in one SQLite file with encrypted values; open it with its passphrase (or raw key)."""

    def __init__(
        self,
        path: Path | str,
        *,
        passphrase: str | None = None,
        key: bytes | None = None,
        scrypt_n: int = DEFAULT_SCRYPT_N,
    ) -> None:
        if (passphrase is None) == (key is None):
            raise ConfigurationError("open an encrypted device store with a passphrase or a key (exactly one)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, as the plain SQLite adapter does.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._lock = threading.RLock()
        self._in_transaction = False
        self._closed = False
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._raise_if_plaintext()
            self._db.executescript(_SCHEMA)
            self._box = _Box(self._unlock(passphrase, key, scrypt_n))
        except (sqlite3.DatabaseError, KeyError, ValueError) as error:
            self._db.close()
            raise ConfigurationError(f"{self.path} is not a Keel encrypted device store: {error}") from error
        except BaseException:
            self._db.close()
            raise

    def _raise_if_plaintext(self) -> None:
        columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(op_log)")}
        if columns and "entity_mac" not in columns:
            raise ConfigurationError(f"{self.path} is a plaintext device store, not an encrypted one")

    def _unlock(self, passphrase: str | None, key: bytes | None, scrypt_n: int) -> StoreKeys:
        """The store's keys: derived and checked (an existing store), or set up (a new one)."""
        row = self._db.execute("SELECT salt, scrypt_n, scrypt_r, scrypt_p, check_box FROM keel_crypto").fetchone()
        if row is None:
            salt = os.urandom(16)
            keys = StoreKeys.from_master(key) if key else StoreKeys.from_passphrase(passphrase or "", salt, n=scrypt_n)
            self._db.execute(
                "INSERT INTO keel_crypto (id, version, salt, scrypt_n, scrypt_r, scrypt_p, check_box) "
                "VALUES (1, 1, ?, ?, 8, 1, ?)",
                (salt, scrypt_n, _Box(keys).seal(_CHECK, "keel_crypto")),
            )
            return keys
        salt, n, r, p, check_box = row
        keys = (
            StoreKeys.from_master(key)
            if key
            else StoreKeys.from_passphrase(passphrase or "", bytes(salt), n=int(n), r=int(r), p=int(p))
        )
        try:
            _Box(keys).open(bytes(check_box), "keel_crypto")
        except IntegrityError as error:
            raise WrongKeyError(f"the passphrase or key does not open the device store {self.path}") from error
        return keys

    @contextmanager
    def _transaction(self) -> Iterator[StoreTransaction]:
        with self._lock:
            if self._closed:
                raise ConfigurationError(f"device store {self.path} is closed")
            if self._in_transaction:
                raise ConfigurationError("device store transactions do not nest")
            self._in_transaction = True
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield _EncryptedTransaction(self._db, self._box)
                except BaseException:
                    self._db.execute("ROLLBACK")
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
        return f"EncryptedSqliteDeviceStore({str(self.path)!r})"
