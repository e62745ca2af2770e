"""Signed checkpoints: a server key vouches for a tenant's chain heads and projection digests at a log cut.

A checkpoint body is read in one PostgreSQL snapshot — the projector's stored offsets of every change
partition (the cut), and for one tenant every signed device's chain head and each entity table's digest
(projections.digest, over plaintext values) — and signed with Ed25519 over its canonical JSON. Because
offsets, heads and rows commit together in every batch, replaying the log up to the cut must reproduce the
heads and digests exactly; `keel audit verify` does that, so a checkpoint proves what the log held and what
the projection was at that moment even after both were edited. The verifier takes the public key from its
own configuration, never from the database it checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keel.errors import ConfigurationError, IntegrityError
from projections.batch import TopicPartition

__all__ = [
    "CHECKPOINT_CONTEXT",
    "CheckpointBody",
    "CheckpointKey",
    "SignedCheckpoint",
    "checkpoint_key_id",
    "raise_if_badly_signed",
]

CHECKPOINT_CONTEXT = b"keel-checkpoint-v1\x00"


def checkpoint_key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable id of a checkpoint public key (sha256 of its raw bytes, 16 hex digits)."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CheckpointBody:
    """What a checkpoint vouches for (module docstring)."""

    tenant_id: str
    created_at_ms: int
    group_id: str
    offsets: tuple[tuple[str, int, int], ...]  # (topic, partition, next offset), sorted
    heads: tuple[tuple[str, int, str | None], ...]  # (device, head seq, head hash hex), sorted
    digests: tuple[tuple[str, int, str], ...]  # (entity type, live entities, digest), sorted

    def as_json(self) -> dict[str, Any]:
        """The JSON form stored in `audit_checkpoints.body`."""
        return {
            "v": 1,
            "tenant_id": self.tenant_id,
            "created_at_ms": self.created_at_ms,
            "group_id": self.group_id,
            "offsets": [list(o) for o in self.offsets],
            "heads": [list(h) for h in self.heads],
            "digests": [list(d) for d in self.digests],
        }

    @classmethod
    def from_json(cls, raw: Any) -> CheckpointBody:
        """Inverse of `as_json`; IntegrityError when the stored body is not one."""
        if not isinstance(raw, dict) or raw.get("v") != 1:
            raise IntegrityError(f"checkpoint body is not a version 1 body: {raw!r:.80}")
        try:
            return cls(
                str(raw["tenant_id"]),
                int(raw["created_at_ms"]),
                str(raw["group_id"]),
                tuple((str(t), int(p), int(o)) for t, p, o in raw["offsets"]),
                tuple((str(d), int(s), None if h is None else str(h)) for d, s, h in raw["heads"]),
                tuple((str(e), int(c), str(g)) for e, c, g in raw["digests"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise IntegrityError(f"checkpoint body is malformed: {error}") from error

    def canonical(self) -> bytes:
        """The signed bytes: the context, then canonical JSON of the body."""
        return CHECKPOINT_CONTEXT + json.dumps(self.as_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def cut(self) -> dict[TopicPartition, int]:
        """The log cut: next offset per partition."""
        return {TopicPartition(t, p): o for t, p, o in self.offsets}


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A stored checkpoint."""

    checkpoint_id: int
    body: CheckpointBody
    key_id: str
    signature: bytes


def raise_if_badly_signed(checkpoint: SignedCheckpoint, trusted: Sequence[Ed25519PublicKey]) -> None:
    """IntegrityError unless one of the `trusted` keys (the current one, and retired ones) signed this body."""
    by_id = {checkpoint_key_id(key): key for key in trusted}
    public_key = by_id.get(checkpoint.key_id)
    if public_key is None:
        raise IntegrityError(
            f"checkpoint #{checkpoint.checkpoint_id} names key {checkpoint.key_id}, which is not a trusted "
            f"checkpoint key ({', '.join(sorted(by_id)) or 'none configured'})"
        )
    try:
        public_key.verify(checkpoint.signature, checkpoint.body.canonical())
    except InvalidSignature as error:
        raise IntegrityError(
            f"checkpoint #{checkpoint.checkpoint_id} of tenant {checkpoint.body.tenant_id}: bad signature "
            "(its body or signature was altered)"
        ) from error


class CheckpointKey:
    """The server key that signs checkpoints (an Ed25519 PEM file, `KEEL_AUDIT_CHECKPOINT_KEY_FILE`)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def from_pem_file(cls, path: Path) -> CheckpointKey:
        """Load the key; ConfigurationError when unreadable or not Ed25519."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as error:
            raise ConfigurationError(f"{path}: cannot read an unencrypted PEM private key: {error}") from error
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"{path}: the checkpoint key must be Ed25519")
        return cls(key)

    @staticmethod
    def write_new(path: Path) -> CheckpointKey:
        """Create a key file (0600) that does not exist yet."""
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            with path.open("xb") as handle:
                path.chmod(0o600)
                handle.write(pem)
        except FileExistsError as error:
            raise ConfigurationError(f"{path} exists: refusing to overwrite a checkpoint key") from error
        return CheckpointKey(key)

    @staticmethod
    def public_key_from_pem_file(path: Path) -> Ed25519PublicKey:
        """The verifying key in a PEM file holding either half (retired keys are kept as public PEM)."""
        try:
            data = path.read_bytes()
            key: object = (
                serialization.load_pem_private_key(data, password=None).public_key()
                if b"PRIVATE KEY" in data
                else serialization.load_pem_public_key(data)
            )
        except (OSError, ValueError, TypeError) as error:
            raise ConfigurationError(f"{path}: cannot read a PEM key: {error}") from error
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigurationError(f"{path}: checkpoint keys are Ed25519")
        return key

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The verifying half."""
        return self._key.public_key()

    @property
    def key_id(self) -> str:
        """`checkpoint_key_id` of this key."""
        return checkpoint_key_id(self.public_key)

    def sign(self, body: CheckpointBody) -> tuple[str, bytes]:
        """(key id, signature) of a body."""
        return self.key_id, self._key.sign(body.canonical())
