"""`keel audit verify`: prove from the log that neither the log nor the PostgreSQL projection was altered.

The log is replayed, with the projector's own code (decoder with signature checks, chain book, merge), into
a shadow schema, in stages:

1. up to the cut of each stored checkpoint whose signature the configured checkpoint key verifies — the
   shadow's chain heads and digests for the checkpoint's tenant must equal what the checkpoint vouches for
   (a log edited or truncated after the checkpoint, or a checkpoint edited in the database, cannot match);
2. up to the live projection's offsets, read in the same snapshot as the live rows — every entity row (its
   visible values and its merged state) and every chain head must equal the shadow's, so a row edited
   directly in PostgreSQL is named, as is a chain head moved by hand.

Along the way every record that fails verification (a forged, altered or re-chained op) is reported, as
is every signed device whose chain has a hole (a record missing from the log: its head stays below linked
seqs). Findings make the command exit 1. The shadow schema is dropped afterwards unless asked to keep it.
Runs as the schema owner (it creates the shadow schema); the live projector keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consumers.dead_letter import DeadLetter, DeadLetterQueue
from consumers.decoder import EventDecoder, entity_of_topic
from consumers.kafka_source_adapter import KafkaSource
from consumers.rebuild import BoundedSource, caught_up
from consumers.runtime import ConsumerRuntime, RuntimeConfig
from consumers.signature_check import signature_check
from keel.errors import ConfigurationError, IntegrityError, KeelError
from keel.event_log import OutgoingRecord, RecordPosition
from keel.logging import get_logger
from keel.settings import Settings
from projections.audit_pg_adapter import PgAuditReader, ProjectionSnapshot
from projections.batch import TopicPartition
from projections.checkpoints import CheckpointBody, CheckpointKey, SignedCheckpoint, raise_if_badly_signed
from projections.checkpoints_pg_adapter import PgCheckpoints
from projections.pg_adapter import Pool
from projections.pg_admin_adapter import PgAdmin
from projections.pg_store_adapter import PgProjectionStore
from projections.sql_migrator_adapter import migrate
from projections.state_codec import state_from_json
from schemas.catalog import Catalog, default_catalog
from schemas.envelope import TraceHeaders
from schemas.migrations import MigrationRegistry
from schemas.registry import SchemaRegistry

__all__ = ["AuditReport", "Finding", "compare_projections", "trusted_checkpoint_keys", "verify"]

_log = get_logger("audit")


@dataclass(frozen=True)
class Finding:
    """One thing that does not verify: what kind, what it concerns, and why."""

    kind: str  # log | projection | chain | checkpoint
    subject: str
    message: str


@dataclass
class AuditReport:
    """The outcome of one verification."""

    tenant_id: str | None
    shadow_schema: str
    findings: list[Finding] = field(default_factory=list)
    records_replayed: int = 0
    dead_letters: int = 0
    checkpoints_verified: int = 0
    checkpoints_unchecked: int = 0  # no checkpoint key configured
    rows_compared: int = 0
    devices_compared: int = 0
    seconds: float = 0.0

    @property
    def is_verified(self) -> bool:
        """Nothing was found."""
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "tenant_id": self.tenant_id,
            "verified": self.is_verified,
            "findings": [f.__dict__ for f in self.findings],
            "records_replayed": self.records_replayed,
            "dead_letters": self.dead_letters,
            "checkpoints_verified": self.checkpoints_verified,
            "checkpoints_unchecked": self.checkpoints_unchecked,
            "rows_compared": self.rows_compared,
            "devices_compared": self.devices_compared,
            "seconds": round(self.seconds, 2),
        }


def trusted_checkpoint_keys(settings: Settings, retired: Sequence[Path] = ()) -> list[Ed25519PublicKey]:
    """The keys checkpoints may be signed with: `KEEL_AUDIT_CHECKPOINT_KEY_FILE`'s, and retired ones (PEM)."""
    path = settings.audit_checkpoint_key_file
    current = [CheckpointKey.from_pem_file(path).public_key] if path is not None else []
    return current + [CheckpointKey.public_key_from_pem_file(old) for old in retired]


class _ReplayLetters(DeadLetterQueue):
    """Dead letters met during the replay become findings (forgeries) instead of DLQ records."""

    def __init__(self, tenant_id: str | None) -> None:
        super().__init__(_NoWriter(), "audit")
        self._tenant = tenant_id
        self.findings: dict[tuple[str, int, int], Finding] = {}
        self.met = 0

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Record each letter (an integrity failure is a finding; anything else was refused for its content)."""
        await asyncio.sleep(0)
        for letter in letters:
            self.met += 1
            record = letter.record
            tenant = dict(record.headers).get(TraceHeaders.TENANT)
            if self._tenant is not None and tenant is not None and tenant.decode(errors="replace") != self._tenant:
                continue
            if isinstance(letter.error, IntegrityError):
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                self.findings[(record.topic, record.partition, record.offset)] = Finding(
                    "log", where, str(letter.error)
                )


class _NoWriter:
    """A `LogWriter` that is never called (the replay's dead letters are only recorded)."""

    async def start(self) -> None:
        """Nothing to connect."""

    async def write(self, records: Sequence[OutgoingRecord]) -> list[RecordPosition]:
        """Never used."""
        raise ConfigurationError(f"the audit replay does not write ({len(records)} records)")

    async def stop(self) -> None:
        """Nothing to flush."""


async def _replay_to(
    runtime: ConsumerRuntime, bounded: BoundedSource, cut: Mapping[TopicPartition, int], task: asyncio.Task[None]
) -> None:
    await runtime.assigned.wait()
    owned = runtime.source.assignment()
    bounded.raise_targets({p: o for p, o in cut.items() if p in owned})
    deadline = time.monotonic() + 3_600
    while not await caught_up(runtime, {p: o for p, o in bounded.targets.items() if p in owned}):
        if task.done():
            task.result()
            raise ConfigurationError("the audit replay stopped before reaching the cut")
        if time.monotonic() > deadline:
            raise TimeoutError("the audit replay did not reach the cut within an hour")
        await asyncio.sleep(0.05)


def _compare_checkpoint(checkpoint: SignedCheckpoint, shadow: CheckpointBody) -> list[Finding]:
    """Differences between what a checkpoint vouches for and what the log replays to at its cut."""
    subject = f"checkpoint #{checkpoint.checkpoint_id} ({checkpoint.body.tenant_id})"
    found = []
    vouched_heads = {d: (s, h) for d, s, h in checkpoint.body.heads}
    replayed_heads = {d: (s, h) for d, s, h in shadow.heads}
    for device in sorted(set(vouched_heads) | set(replayed_heads)):
        if vouched_heads.get(device) != replayed_heads.get(device):
            found.append(
                Finding(
                    "checkpoint",
                    subject,
                    f"device {device}: the checkpoint vouches for chain head {vouched_heads.get(device)}, the log "
                    f"replays to {replayed_heads.get(device)}",
                )
            )
    vouched = {e: (c, g) for e, c, g in checkpoint.body.digests}
    replayed = {e: (c, g) for e, c, g in shadow.digests}
    for entity in sorted(set(vouched) | set(replayed)):
        if vouched.get(entity) != replayed.get(entity):
            found.append(
                Finding(
                    "checkpoint",
                    subject,
                    f"{entity}: the checkpoint vouches for {vouched.get(entity)} (live entities, digest), the log "
                    f"replays to {replayed.get(entity)}",
                )
            )
    return found


def _describe_difference(live: dict[str, Any] | None, replayed: dict[str, Any] | None) -> str:
    if live is None or replayed is None:
        return f"deleted in {'PostgreSQL' if live is None else 'the log'} only"
    fields = [name for name in sorted(set(live) | set(replayed)) if live.get(name) != replayed.get(name)]
    parts = [f"{name} = {live.get(name)!r:.40} (log: {replayed.get(name)!r:.40})" for name in fields[:3]]
    return ", ".join(parts) if parts else "its merged state (field stamps or history) differs"


def compare_projections(live: ProjectionSnapshot, shadow: ProjectionSnapshot) -> list[Finding]:
    """Rows and chain heads of the live projection that the replayed log does not reproduce."""
    found = []
    for key in sorted(set(live.rows) | set(shadow.rows)):
        entity, tenant, entity_id = key
        subject = f"{entity} {tenant}/{entity_id}"
        mine, theirs = live.rows.get(key), shadow.rows.get(key)
        if mine is None:
            found.append(Finding("projection", subject, "missing from PostgreSQL, present in the log"))
        elif theirs is None:
            found.append(Finding("projection", subject, "in PostgreSQL, but no op in the log created it"))
        elif mine[0] != theirs[0] or state_from_json(tenant, entity, entity_id, mine[1]) != state_from_json(
            tenant, entity, entity_id, theirs[1]
        ):
            found.append(
                Finding("projection", subject, f"edited in PostgreSQL: {_describe_difference(mine[0], theirs[0])}")
            )
    for device in sorted(set(live.heads) | set(shadow.heads)):
        mine_head, theirs_head = live.heads.get(device), shadow.heads.get(device)
        pair = [
            (h.head_seq, h.head_hash.hex()[:16] if h.head_hash else None) if h else None
            for h in (mine_head, theirs_head)
        ]
        if pair[0] != pair[1]:
            found.append(
                Finding(
                    "chain", f"device {device}", f"chain head in PostgreSQL {pair[0]}, replayed from the log {pair[1]}"
                )
            )
    for device, seqs in sorted(shadow.beyond_head.items()):
        head = shadow.heads.get(device)
        at = head.head_seq if head else 0
        found.append(
            Finding(
                "chain",
                f"device {device}",
                f"seq {at + 1} is missing from the log: the chain stops at seq {at} while seqs "
                f"{seqs[0]}..{seqs[-1]} are linked (a record was dropped)",
            )
        )
    return found


async def verify(
    settings: Settings,
    pool: Pool,
    registry: SchemaRegistry,
    migrations: MigrationRegistry,
    *,
    tenant_id: str | None = None,
    trusted_keys: Sequence[Ed25519PublicKey] = (),
    keep_shadow: bool = False,
    catalog: Catalog | None = None,
) -> AuditReport:
    """Replay the log into a shadow schema and compare it with checkpoints and the live projection."""
    began = time.monotonic()
    catalog = catalog or default_catalog()
    entities = catalog.entities()
    live = settings.pg_schema
    shadow = f"{live}_audit_{time.strftime('%Y%m%d%H%M%S')}"[:63]
    admin = PgAdmin(pool)
    if await admin.schema_exists(shadow):
        raise ConfigurationError(f"schema {shadow} exists; another audit is running")
    report = AuditReport(tenant_id, shadow)
    checkpoints = await PgCheckpoints(pool, live, entities).checkpoints(tenant_id)
    trusted: list[SignedCheckpoint] = []
    for checkpoint in checkpoints:
        if not trusted_keys:
            report.checkpoints_unchecked += 1
            continue
        try:
            raise_if_badly_signed(checkpoint, trusted_keys)
        except IntegrityError as error:
            report.findings.append(Finding("checkpoint", f"checkpoint #{checkpoint.checkpoint_id}", str(error)))
            continue
        trusted.append(checkpoint)
    await migrate(pool, shadow)
    try:
        await _replay_and_compare(
            settings, pool, registry, migrations, report=report, checkpoints=trusted, entities=entities, catalog=catalog
        )
    finally:
        if not keep_shadow:
            await admin.drop_schema(shadow)
    report.seconds = time.monotonic() - began
    return report


async def _replay_and_compare(
    settings: Settings,
    pool: Pool,
    registry: SchemaRegistry,
    migrations: MigrationRegistry,
    *,
    report: AuditReport,
    checkpoints: list[SignedCheckpoint],
    entities: list[str],
    catalog: Catalog,
) -> None:
    topics = [settings.topic_for(entity) for entity in entities]
    letters = _ReplayLetters(report.tenant_id)
    decoder = EventDecoder(
        registry,
        migrations,
        entity_of_topic(settings.topic_prefix),
        catalog=catalog,
        signatures=signature_check(settings, pool),
    )
    bounded = BoundedSource(KafkaSource(settings, topics, group_id=None), {})
    runtime = ConsumerRuntime(
        bounded,
        PgProjectionStore(pool, report.shadow_schema),
        decoder,
        letters,
        RuntimeConfig(settings.consumer_group, max_records=settings.projector_batch_max_records, commit_to_log=False),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop), name="audit-replay")
    shadow_checkpoints = PgCheckpoints(pool, report.shadow_schema, entities)
    try:
        for checkpoint in checkpoints:
            await _replay_to(runtime, bounded, checkpoint.body.cut, task)
            replayed = await shadow_checkpoints.body(checkpoint.body.tenant_id, checkpoint.body.group_id)
            report.findings.extend(_compare_checkpoint(checkpoint, replayed))
            report.checkpoints_verified += 1
        live = await PgAuditReader(pool, settings.pg_schema, entities).snapshot(
            report.tenant_id, settings.consumer_group
        )
        await _replay_to(runtime, bounded, live.offsets, task)
        replayed_state = await PgAuditReader(pool, report.shadow_schema, entities).snapshot(
            report.tenant_id, settings.consumer_group
        )
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, KeelError):
            await task
    report.findings.extend(letters.findings.values())
    report.findings.extend(compare_projections(live, replayed_state))
    report.records_replayed = runtime.stats.applied + runtime.stats.duplicates + letters.met
    report.dead_letters = letters.met
    report.rows_compared = len(set(live.rows) | set(replayed_state.rows))
    report.devices_compared = len(set(live.heads) | set(replayed_state.heads))
    _log.info(
        "audit finished", tenant=report.tenant_id, findings=len(report.findings), replayed=report.records_replayed
    )
