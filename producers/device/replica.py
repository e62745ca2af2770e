"""The device's local replica: writes become ops atomically, remote changes merge by the server's own rules.

Every method is one store transaction. A local write allocates the next device_seq, stamps the change with
the hybrid logical clock, merges it with `projections.conflict_rules.apply_event` (the function the
projector uses) and stores the new state, the op and the clock together. A pulled page is merged the same
way and the cursor moves in the same transaction, so a crash can neither skip nor repeat a page: a page
applied twice merges to the same state (the merge is idempotent).

A local write is where an op's trace begins: `keel.device.capture` (a child of the app's current span, if
any) and its W3C traceparent is stored with the op, so the push, the gateway, the projector and the
delivery to other devices continue or link to it (docs/observability.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keel.errors import ConfigurationError, ValidationError
from keel.hlc import HlcTimestamp, HybridLogicalClock, wall_clock_ms
from keel.telemetry import get_tracer, traceparent_of
from producers.device.signing import OpSigner
from producers.device.state_codec import dumps_event
from producers.device.store import DeviceStore, LoggedOp, OpStatus, StoredEntity, StoreTransaction
from projections.conflict_rules import ConflictRules, EntityState, FieldState, WriteStamp, apply_event
from projections.digest import canonical_row, digest_rows
from schemas.catalog import Catalog, default_catalog
from schemas.domain_migrations import default_registry
from schemas.envelope import ChangeEvent, Op, new_event_id
from schemas.migrations import MigrationRegistry
from schemas.validation import validate_payload

__all__ = ["ClockReport", "PushOutcome", "RepairSnapshot", "Replica"]

TENANT = "identity.tenant_id"
DEVICE = "identity.device_id"
SECRET = "identity.device_secret"  # noqa: S105 - a metadata key, not a secret
HLC = "clock.hlc"
OFFSET = "clock.offset_ms"
RTT = "clock.rtt_ms"
CURSOR = "pull.cursor"
SEQ_FLOOR = "seq.floor"
NEGOTIATED = "versions.negotiated"
ACKED = "push.acked_seq"
_tracer = get_tracer("device")


@dataclass(frozen=True, slots=True)
class ClockReport:
    """The clock offset to the server measured at the last handshake (server minus device)."""

    offset_ms: int | None
    rtt_ms: int | None
    hlc: HlcTimestamp


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What one acknowledgement did to the op-log."""

    sent: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class RepairSnapshot:
    """The server's state of one entity in the device's version; `fields` None when the server has none."""

    entity_type: str
    entity_id: str
    fields: Mapping[str, FieldState] | None
    deleted: WriteStamp | None = None


def _hlc_of(stamp: WriteStamp) -> HlcTimestamp:
    # Devices stamp writes with an HLC whose node is their device id, so a stamp names the clock it came from.
    return HlcTimestamp(stamp.physical_ms, stamp.logical, stamp.device_id)


class Replica:
    """One device's entities, op-log, clock and cursor over a `DeviceStore`."""

    def __init__(
        self,
        store: DeviceStore,
        *,
        tenant_id: str,
        device_id: str,
        supported_versions: Mapping[str, Sequence[int]],
        catalog: Catalog | None = None,
        rules: ConflictRules | None = None,
        migrations: MigrationRegistry | None = None,
        wall: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.store = store
        self.catalog = catalog or default_catalog()
        self.rules = rules or ConflictRules()
        self._migrations = migrations
        self.tenant_id = tenant_id
        self.device_id = device_id
        self.supported_versions = {entity: sorted(set(v)) for entity, v in supported_versions.items()}
        for entity, versions in self.supported_versions.items():
            known = self.catalog.versions(entity)
            if not versions or any(v not in known for v in versions):
                raise ConfigurationError(f"{entity}: supported versions {versions} must be among {known}")
        self._wall = wall
        with store.transaction() as tx:
            for key, value in ((TENANT, tenant_id), (DEVICE, device_id)):
                stored = tx.get_meta(key)
                if stored is None:
                    tx.set_meta(key, value)
                elif stored != value:
                    raise ConfigurationError(f"this store belongs to {key.split('.')[-1]} {stored!r}, not {value!r}")
            last = tx.get_meta(HLC)
            negotiated = tx.get_meta(NEGOTIATED)
            self.signer = OpSigner.load(tx)  # None for a device enrolled without a signing key
        self.clock = HybridLogicalClock(device_id, wall, HlcTimestamp.decode(last) if last else HlcTimestamp(0, 0, ""))
        self._negotiated: dict[str, int] = json.loads(negotiated) if negotiated else {}

    # ------------------------------------------------------------ versions and identity

    def local_version(self, entity_type: str) -> int:
        """The version this device stores and writes: negotiated at handshake, else its newest supported."""
        if entity_type not in self.supported_versions:
            raise ValidationError(f"this device does not handle entity type {entity_type!r}", field="entity_type")
        return self._negotiated.get(entity_type) or self.supported_versions[entity_type][-1]

    @property
    def negotiated_versions(self) -> dict[str, int]:
        """Versions agreed at the last handshake (empty before the first)."""
        return dict(self._negotiated)

    def _defaults(self, entity_type: str, version: int) -> dict[str, Any]:
        schema = self.catalog.schema(entity_type, version)
        return {spec.name: copy.deepcopy(spec.default) for spec in schema.fields}

    def get_meta(self, key: str) -> str | None:
        """A metadata value (credentials, token, cursor)."""
        with self.store.transaction() as tx:
            return tx.get_meta(key)

    def set_meta(self, values: Mapping[str, str]) -> None:
        """Set metadata values in one transaction."""
        with self.store.transaction() as tx:
            for key, value in values.items():
                tx.set_meta(key, value)

    # ------------------------------------------------------------ local writes

    def upsert(self, entity_type: str, entity_id: str, fields: Mapping[str, Any]) -> ChangeEvent:
        """Write fields of an entity (creating it if needed); the op is logged in the same transaction."""
        if not fields:
            raise ValidationError("an upsert needs at least one field", field="payload")
        return self._write(entity_type, entity_id, Op.UPSERT, dict(fields))

    def delete(self, entity_type: str, entity_id: str) -> ChangeEvent:
        """Tombstone an entity; the op is logged in the same transaction."""
        return self._write(entity_type, entity_id, Op.DELETE, None)

    def _next_seq(self, tx: StoreTransaction) -> int:
        floor = tx.get_meta(SEQ_FLOOR)
        return max(tx.last_logged_seq(), int(floor) if floor else 0) + 1

    @staticmethod
    def _base_hlc(state: EntityState | None) -> HlcTimestamp | None:
        if state is None:
            return None
        candidates = [h for h in (state.newest_hlc,) if h is not None]
        stamp = state.newest_stamp
        if stamp is not None:
            candidates.append(_hlc_of(stamp))
        return max(candidates, default=None)

    def _write(self, entity_type: str, entity_id: str, op: Op, fields: dict[str, Any] | None) -> ChangeEvent:
        with _tracer.start_as_current_span("keel.device.capture") as span:
            event = self._write_op(entity_type, entity_id, op, fields, traceparent_of(span))
            span.set_attributes(
                {
                    "keel.tenant": event.tenant_id,
                    "keel.device": event.device_id,
                    "keel.device_seq": event.device_seq,
                    "keel.event_id": event.event_id,
                    "keel.entity_type": event.entity_type,
                    "keel.entity_id": event.entity_id,
                    "keel.op": event.op.value,
                    "keel.schema_version": event.schema_version,
                }
            )
            return event

    def _write_op(
        self, entity_type: str, entity_id: str, op: Op, fields: dict[str, Any] | None, trace: str | None
    ) -> ChangeEvent:
        version = self.local_version(entity_type)
        defaults = self._defaults(entity_type, version)
        if not entity_id or len(entity_id) > 200:
            raise ValidationError("entity_id must be 1..200 characters", field="entity_id")
        with self.store.transaction() as tx:
            current = tx.load_entity(entity_type, entity_id)
            state = current.state if current is not None else None
            payload: dict[str, Any] | None = None
            changed: tuple[str, ...] = ()
            if fields is not None:
                changed = tuple(sorted(fields))
                visible = dict(current.visible) if current is not None and current.visible is not None else {}
                payload = defaults | {k: v for k, v in visible.items() if k in defaults} | fields
                validate_payload(entity_type, version, payload, changed, self.catalog)
            event = ChangeEvent(
                event_id=new_event_id(),
                tenant_id=self.tenant_id,
                device_id=self.device_id,
                device_seq=self._next_seq(tx),
                entity_type=entity_type,
                entity_id=entity_id,
                op=op,
                hlc=self.clock.now(),
                schema_version=version,
                payload=payload,
                changed_fields=changed,
                base_hlc=self._base_hlc(state),
            )
            if self.signer is not None:
                event = self.signer.seal_in(tx, event)  # chained, hashed and signed with the op (signing.py)
            merged = apply_event(state, event, self.rules).state
            tx.save_entity(StoredEntity(merged, merged.visible(defaults)))
            tx.append_op(event, len(dumps_event(event).encode()), self._wall(), trace=trace)
            tx.set_meta(HLC, self.clock.last().encode())
        return event

    # ------------------------------------------------------------ reads

    def get(self, entity_type: str, entity_id: str) -> dict[str, Any] | None:
        """Visible values of an entity, or None if it does not exist (or is deleted)."""
        with self.store.transaction() as tx:
            found = tx.load_entity(entity_type, entity_id)
        return dict(found.visible) if found is not None and found.visible is not None else None

    def rows(self, entity_type: str) -> list[tuple[str, dict[str, Any]]]:
        """Every live entity of a type as (entity_id, visible values), in id order."""
        with self.store.transaction() as tx:
            found = tx.entities(entity_type)
        return [(e.entity_id, dict(e.visible)) for e in found if e.visible is not None]

    def state(self, entity_type: str, entity_id: str) -> EntityState | None:
        """The merged state (fields with stamps), for diagnostics and tests."""
        with self.store.transaction() as tx:
            found = tx.load_entity(entity_type, entity_id)
        return found.state if found is not None else None

    def digest(self, entity_type: str) -> str:
        """projections.digest over this device's live rows of a type."""
        return digest_rows(self.rows(entity_type))

    def row_hashes(self, entity_type: str) -> dict[str, str]:
        """sha256 of each live row's canonical form, to find which entities differ."""
        return {eid: hashlib.sha256(canonical_row(eid, values)).hexdigest() for eid, values in self.rows(entity_type)}

    # ------------------------------------------------------------ the op queue

    def pending_batch(self, max_ops: int, max_bytes: int) -> list[LoggedOp]:
        """The oldest pending ops, at most `max_ops` and `max_bytes` (always at least one when any is pending)."""
        with self.store.transaction() as tx:
            candidates = tx.ops(OpStatus.PENDING, limit=max_ops)
        batch: list[LoggedOp] = []
        total = 0
        for op in candidates:
            if batch and total + op.size_bytes > max_bytes:
                break
            batch.append(op)
            total += op.size_bytes
        return batch

    def count(self, status: OpStatus) -> int:
        """How many ops are in a status."""
        with self.store.transaction() as tx:
            return tx.count_ops(status)

    def quarantined(self) -> list[LoggedOp]:
        """Ops the gateway refused, with the reason: for the app to show or fix."""
        with self.store.transaction() as tx:
            return tx.ops(OpStatus.QUARANTINED)

    def record_acknowledgement(
        self, sent: Sequence[int], acked_seq: int, rejected: Mapping[int, tuple[str, str]]
    ) -> PushOutcome:
        """Mark ops of a push: seqs <= acked_seq are sent, rejected ones quarantined (code, reason)."""
        durable = [seq for seq in sent if seq <= acked_seq and seq not in rejected]
        with self.store.transaction() as tx:
            previous = tx.get_meta(ACKED)
            if acked_seq > (int(previous) if previous else 0):
                tx.set_meta(ACKED, str(acked_seq))
            pending = {op.seq for op in tx.ops(OpStatus.PENDING)}
            durable = [seq for seq in durable if seq in pending]
            tx.set_status(durable, OpStatus.SENT)
            quarantined = 0
            for seq, (code, reason) in rejected.items():
                if seq in pending:
                    tx.set_status([seq], OpStatus.QUARANTINED, reason=reason, code=code)
                    quarantined += 1
        return PushOutcome(len(durable), quarantined)

    def acked_seq(self) -> int:
        """The highest seq the gateway has acknowledged as consumed (0 before the first push)."""
        stored = self.get_meta(ACKED)
        return int(stored) if stored else 0

    def quarantine(self, seq: int, code: str, reason: str) -> None:
        """Quarantine one pending op locally (e.g. it is larger than the gateway accepts)."""
        with self.store.transaction() as tx:
            tx.set_status([seq], OpStatus.QUARANTINED, reason=reason, code=code)

    def requeue_from(self, seq: int) -> int:
        """Move sent ops with seq >= `seq` back to pending (the gateway lost them); how many moved."""
        with self.store.transaction() as tx:
            moved = [op.seq for op in tx.ops(OpStatus.SENT, after_seq=seq - 1)]
            tx.set_status(moved, OpStatus.PENDING)
        return len(moved)

    def raise_seq_floor(self, head_seq: int, head_hash: str | None = None) -> None:
        """Never allocate a seq at or below the gateway's head (a store restored from an old backup).

        A store behind the gateway also chains its next op after the gateway's head hash.
        """
        with self.store.transaction() as tx:
            floor = tx.get_meta(SEQ_FLOOR)
            if head_seq > (int(floor) if floor else 0):
                tx.set_meta(SEQ_FLOOR, str(head_seq))
            if head_seq > tx.last_logged_seq():
                OpSigner.adopt_head(tx, head_hash)

    # ------------------------------------------------------------ handshake results and the clock

    def record_handshake(
        self, versions: Mapping[str, int], server_time_ms: int, sent_at_ms: int, received_at_ms: int
    ) -> ClockReport:
        """Store the agreed versions and the clock offset (server time minus the request's midpoint)."""
        rtt = max(0, received_at_ms - sent_at_ms)
        offset = server_time_ms - (sent_at_ms + rtt // 2)
        chosen = {entity: v for entity, v in versions.items() if entity in self.supported_versions}
        with self.store.transaction() as tx:
            tx.set_meta(NEGOTIATED, json.dumps(chosen, sort_keys=True))
            tx.set_meta(OFFSET, str(offset))
            tx.set_meta(RTT, str(rtt))
        self._negotiated = chosen
        return ClockReport(offset, rtt, self.clock.last())

    def clock_report(self) -> ClockReport:
        """The last measured offset to the server and the current hybrid logical time."""
        with self.store.transaction() as tx:
            offset, rtt = tx.get_meta(OFFSET), tx.get_meta(RTT)
        return ClockReport(int(offset) if offset else None, int(rtt) if rtt else None, self.clock.last())

    # ------------------------------------------------------------ remote changes

    @property
    def cursor(self) -> str:
        """The outbox cursor after the last applied page ('' before the first)."""
        with self.store.transaction() as tx:
            return tx.get_meta(CURSOR) or ""

    def _to_local(self, event: ChangeEvent) -> ChangeEvent:
        version = self.local_version(event.entity_type)
        changed = event.asserted_fields(self.catalog.schema(event.entity_type, event.schema_version).field_names)
        if event.schema_version == version:
            return event if changed == event.changed_fields else event.with_payload(event.payload, changed, version)
        registry = self._migrations or default_registry()
        moved = registry.migrate(event.entity_type, event.payload, changed, event.schema_version, version)
        return event.with_payload(moved.payload, moved.changed_fields, version)

    def apply_remote(self, events: Iterable[ChangeEvent], next_cursor: str) -> int:
        """Merge received changes and move the cursor, in one transaction; how many events were merged.

        Each touched entity is loaded once and saved once per page, with every change of the page merged in
        order in between: the same rows as saving after each change, without re-reading what was just written.
        """
        merged_count = 0
        touched: dict[tuple[str, str], tuple[EntityState, int]] = {}  # → (merged state, its schema version)
        with self.store.transaction() as tx:
            for event in events:
                self.clock.observe(event.hlc)
                if event.entity_type not in self.supported_versions or event.tenant_id != self.tenant_id:
                    continue  # a type this build does not handle: it still moves the clock and the cursor
                local = self._to_local(event)
                key = (local.entity_type, local.entity_id)
                if key in touched:
                    state: EntityState | None = touched[key][0]
                else:
                    current = tx.load_entity(*key)
                    state = current.state if current else None
                touched[key] = (apply_event(state, local, self.rules).state, local.schema_version)
                merged_count += 1
            defaults: dict[tuple[str, int], dict[str, Any]] = {}  # read-only here: each row only serialises them
            for (entity_type, _), (merged, version) in touched.items():
                if (entity_type, version) not in defaults:
                    defaults[(entity_type, version)] = self._defaults(entity_type, version)
                tx.save_entity(StoredEntity(merged, merged.visible(defaults[(entity_type, version)])))
            tx.set_meta(CURSOR, next_cursor)
            tx.set_meta(HLC, self.clock.last().encode())
        return merged_count

    def reset_cursor(self, cursor: str = "") -> None:
        """Start pulling again from `cursor` (a resync); merging what comes again changes nothing."""
        with self.store.transaction() as tx:
            tx.set_meta(CURSOR, cursor)

    def repair(self, snapshots: Iterable[RepairSnapshot]) -> int:
        """Replace entities with the server's state, then re-merge this device's own logged ops on top."""
        repaired = 0
        with self.store.transaction() as tx:
            for snapshot in snapshots:
                state = EntityState(
                    self.tenant_id,
                    snapshot.entity_type,
                    snapshot.entity_id,
                    dict(snapshot.fields or {}),
                    snapshot.deleted,
                )
                for op in tx.ops_for_entity(snapshot.entity_type, snapshot.entity_id):
                    if op.status is not OpStatus.QUARANTINED:
                        state = apply_event(state, self._to_local(op.event), self.rules).state
                defaults = self._defaults(snapshot.entity_type, self.local_version(snapshot.entity_type))
                tx.save_entity(StoredEntity(state, state.visible(defaults)))
                repaired += 1
        return repaired
