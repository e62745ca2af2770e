"""The JSON wire format between devices and the gateway: requests, responses, events and page manifests.

Both sides import this module, so the SDK and the gateway cannot disagree on a field. Events travel as
`WireEvent` (the envelope of docs/contract.md with clocks as objects and bytes as hex); the gateway turns
them into Avro. A pull page carries a `Manifest` the device checks before applying anything.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keel.errors import IntegrityError
from keel.hlc import HlcTimestamp
from schemas.envelope import ChangeEvent, Op, Override

__all__ = [
    "AbandonedSeq",
    "DigestResponse",
    "EnrollRequest",
    "EnrollResponse",
    "EntityDigest",
    "EntitySnapshot",
    "EntitySnapshotsResponse",
    "ErrorBody",
    "FieldSnapshot",
    "HandshakeRequest",
    "HandshakeResponse",
    "Limits",
    "Manifest",
    "PageEntry",
    "PullResponse",
    "PushRequest",
    "PushResponse",
    "Rejection",
    "SequenceGap",
    "WireEvent",
    "WireHlc",
    "WireOverride",
    "build_manifest",
    "entry_hash",
    "raise_if_manifest_mismatch",
]


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WireHlc(_Strict):
    """A hybrid logical clock timestamp."""

    physical_ms: int = Field(ge=0)
    logical: int = Field(ge=0, le=2**31 - 1)
    node: str = Field(min_length=1, max_length=200)

    def to_hlc(self) -> HlcTimestamp:
        """The kernel timestamp."""
        return HlcTimestamp(self.physical_ms, self.logical, self.node)

    @classmethod
    def of(cls, hlc: HlcTimestamp) -> WireHlc:
        """Wire form of a kernel timestamp."""
        return cls(physical_ms=hlc.physical_ms, logical=hlc.logical, node=hlc.node)


class WireOverride(_Strict):
    """Why an OVERRIDE was issued (operators only; devices never send one)."""

    reason: str = ""
    actor: str = ""
    decision_id: str | None = None
    supersedes: list[str] = Field(default_factory=list)


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _unhex(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value is not None else None


class WireEvent(_Strict):
    """One change event as JSON (docs/contract.md); payload in the writer's schema version."""

    event_id: str
    tenant_id: str = Field(min_length=1, max_length=200)
    device_id: str = Field(min_length=1, max_length=200)
    device_seq: int = Field(ge=1)
    entity_type: str = Field(min_length=1, max_length=100)
    entity_id: str = Field(min_length=1, max_length=200)
    op: Literal["UPSERT", "DELETE", "OVERRIDE"]
    hlc: WireHlc
    base_hlc: WireHlc | None = None
    schema_version: int = Field(ge=1)
    changed_fields: list[str] = Field(default_factory=list)
    payload: dict[str, Any] | None = None
    override: WireOverride | None = None
    prev_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]*$")
    hash: str | None = Field(default=None, pattern=r"^[0-9a-f]*$")
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]*$")

    @field_validator("event_id")
    @classmethod
    def _is_uuid(cls, value: str) -> str:
        if _CANONICAL_UUID.fullmatch(value):
            return value  # already what str(uuid.UUID(value)) would give: skip the parse, once per op
        return str(uuid.UUID(value))

    def to_event(self) -> ChangeEvent:
        """The domain event."""
        override = self.override
        return ChangeEvent(
            event_id=self.event_id,
            tenant_id=self.tenant_id,
            device_id=self.device_id,
            device_seq=self.device_seq,
            entity_type=self.entity_type,
            entity_id=self.entity_id,
            op=Op(self.op),
            hlc=self.hlc.to_hlc(),
            schema_version=self.schema_version,
            payload=dict(self.payload) if self.payload is not None else None,
            changed_fields=tuple(self.changed_fields),
            base_hlc=self.base_hlc.to_hlc() if self.base_hlc else None,
            override=Override(override.reason, override.actor, override.decision_id, tuple(override.supersedes))
            if override
            else None,
            prev_hash=_unhex(self.prev_hash),
            hash=_unhex(self.hash),
            signature=_unhex(self.signature),
        )

    @classmethod
    def of(cls, event: ChangeEvent) -> WireEvent:
        """Wire form of a domain event."""
        override = event.override
        return cls(
            event_id=event.event_id,
            tenant_id=event.tenant_id,
            device_id=event.device_id,
            device_seq=event.device_seq,
            entity_type=event.entity_type,
            entity_id=event.entity_id,
            op=event.op.value,
            hlc=WireHlc.of(event.hlc),
            base_hlc=WireHlc.of(event.base_hlc) if event.base_hlc else None,
            schema_version=event.schema_version,
            changed_fields=list(event.changed_fields),
            payload=event.payload,
            override=WireOverride(
                reason=override.reason,
                actor=override.actor,
                decision_id=override.decision_id,
                supersedes=list(override.supersedes),
            )
            if override
            else None,
            prev_hash=_hex(event.prev_hash),
            hash=_hex(event.hash),
            signature=_hex(event.signature),
        )


# ---------------------------------------------------------------- enrollment and handshake


class EnrollRequest(_Strict):
    """Enroll a device into a tenant with the enrollment secret (demo and tests; the security issue replaces it)."""

    tenant_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    enrollment_secret: str
    device_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    label: str = Field(default="", max_length=200)
    # The device's Ed25519 public key (32 bytes, hex): its ops must then be signed (docs/security.md).
    public_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class EnrollResponse(_Strict):
    """Credentials of a newly enrolled device; the secret is shown once."""

    tenant_id: str
    device_id: str
    device_secret: str


class HandshakeRequest(_Strict):
    """A device proves who it is and lists the schema versions it speaks per entity."""

    tenant_id: str = Field(min_length=1, max_length=200)
    device_id: str = Field(min_length=1, max_length=200)
    device_secret: str = Field(min_length=1, max_length=400)
    versions: dict[str, list[int]]
    client_time_ms: int = 0


class Limits(_Strict):
    """What the gateway accepts in one push."""

    max_batch_ops: int
    max_body_bytes: int
    max_op_bytes: int


class HandshakeResponse(_Strict):
    """Agreed versions, a bearer token, the server's clock and the device's durable head."""

    token: str
    token_expires_at_ms: int
    versions: dict[str, int]
    in_cohort: dict[str, bool]
    unsupported: list[str]
    server_time_ms: int
    head_seq: int
    limits: Limits
    head_hash: str | None = None  # chain hash at head_seq (signed devices): a restored device chains from it


# ---------------------------------------------------------------- push


class AbandonedSeq(_Strict):
    """A seq the device gave up on before the gateway saw it (e.g. larger than any request may be)."""

    seq: int = Field(ge=1)
    event_id: str
    reason: str = Field(max_length=1000)
    # The abandoned op's signed chain link (docs/security.md), so the device's chain continues past it.
    prev_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]{128}$")


class PushRequest(BaseModel):
    """A batch of ops in device_seq order; each is validated on its own so one bad op fails alone.

    `traces` maps a seq to the W3C traceparent of its op's capture: the gateway continues each op's own
    trace (one push carries ops of many traces; the request's `traceparent` header is the push's own).
    """

    model_config = ConfigDict(extra="forbid")

    ops: list[dict[str, Any]] = Field(default_factory=list)
    abandoned: list[AbandonedSeq] = Field(default_factory=list)
    traces: dict[int, str] = Field(default_factory=dict)


class Rejection(_Strict):
    """An op the gateway refused for good; its seq counts as consumed (the device quarantines it)."""

    seq: int
    event_id: str | None = None
    code: str
    reason: str
    field: str | None = None


class SequenceGap(_Strict):
    """Ops after a missing seq were not processed; the device must resend from `expected`."""

    expected: int
    received: int


class PushResponse(_Strict):
    """Sent only after the broker acknowledged: every seq <= acked_seq is durable or rejected."""

    acked_seq: int
    rejections: list[Rejection] = Field(default_factory=list)
    duplicates: list[int] = Field(default_factory=list)
    gap: SequenceGap | None = None


# ---------------------------------------------------------------- pull


class PageEntry(_Strict):
    """One outbox row as a device sees it: a change down-cast to its version, or a notice addressed to it."""

    cursor: str
    kind: str = "change"
    event: WireEvent | None = None
    cautions: list[str] = Field(default_factory=list)
    notice: dict[str, Any] | None = None
    trace: str | None = None  # W3C traceparent of the change's projection: the device's apply links to it

    @property
    def entry_id(self) -> str:
        """The event id, or the cursor for notices (what the manifest names)."""
        return self.event.event_id if self.event is not None else self.cursor


class Manifest(_Strict):
    """Count, first and last cursor and a checksum over the page's ids and entry hashes."""

    count: int
    first_cursor: str | None
    last_cursor: str | None
    checksum: str


class PullResponse(_Strict):
    """A page of the device's outbox from its cursor."""

    entries: list[PageEntry]
    next_cursor: str
    resync_required: bool = False
    manifest: Manifest


def entry_hash(entry: PageEntry) -> str:
    """sha256 hex over the canonical JSON of one entry as served."""
    body = json.dumps(entry.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def build_manifest(entries: list[PageEntry]) -> Manifest:
    """The manifest of a page."""
    hasher = hashlib.sha256()
    for entry in entries:
        hasher.update(f"{entry.entry_id}:{entry_hash(entry)}\n".encode())
    hasher.update(f"count={len(entries)}".encode())
    return Manifest(
        count=len(entries),
        first_cursor=entries[0].cursor if entries else None,
        last_cursor=entries[-1].cursor if entries else None,
        checksum=hasher.hexdigest(),
    )


def raise_if_manifest_mismatch(page: PullResponse) -> None:
    """IntegrityError unless the page's entries match its manifest."""
    actual = build_manifest(page.entries)
    if actual != page.manifest:
        raise IntegrityError(
            f"pull page does not match its manifest: {actual.count} entries "
            f"({actual.first_cursor}..{actual.last_cursor}) vs manifest {page.manifest.count} "
            f"({page.manifest.first_cursor}..{page.manifest.last_cursor})"
        )


# ---------------------------------------------------------------- digest and repair


class EntityDigest(_Strict):
    """Digest of one entity type's live rows in one schema version."""

    version: int
    digest: str
    count: int
    row_hashes: dict[str, str] | None = None


class DigestResponse(_Strict):
    """The server's digests of the tenant's state, down-cast to the device's versions."""

    entities: dict[str, EntityDigest]


class FieldSnapshot(_Strict):
    """A field's value and the stamp of the write that set it ([physical_ms, logical, rank, device, event])."""

    value: Any
    stamp: list[Any]


class EntitySnapshot(_Strict):
    """The server's merged state of one entity in the device's version (for repairs)."""

    entity_type: str
    entity_id: str
    version: int
    fields: dict[str, FieldSnapshot]
    deleted: list[Any] | None = None


class EntitySnapshotsResponse(_Strict):
    """Snapshots of the requested entities; ids the server does not know are listed as missing."""

    snapshots: list[EntitySnapshot]
    missing: list[str] = Field(default_factory=list)


class ErrorBody(_Strict):
    """Every error response: a stable code, a sentence, and details when they help."""

    error: str
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)
