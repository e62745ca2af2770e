r"""Signed, hash-chained ops: what a device signs, and the checks the gateway, the projector and the audit run.

Each op of a device carries `prev_hash` (the `hash` of the device's previous op; null for its first),
`hash` = SHA-256 of `ChangeEvent.canonical_bytes()` (every field the device asserts, `prev_hash`
included), and `signature` = Ed25519 over a *link*::

    b"keel-op-v1\x00" || utf8(device_id) || b"\x00" || seq as 8 bytes big-endian || prev_hash (32 bytes,
    zeros when null) || hash

Signing the link rather than the bare hash means a link verifies without the op's content: the gateway
forwards the links of ops it refused (so the chain has no unexplained hole) and the projector checks them
against the device's key. The canonical bytes are the same after the JSON hop (device → gateway) and the
Avro hop (gateway → Kafka → projector, decoded to payload form), which tests/schemas/test_op_chain.py
checks for every catalog version; the gateway refuses a signed op whose Avro round trip would change them
(for example a payload that omits fields with defaults), so the log only ever holds what was signed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keel.errors import DecodeError, IntegrityError
from schemas.codec import decode_body, to_payload_form
from schemas.envelope import ChangeEvent

__all__ = [
    "CHAIN_SKIPPED_HEADER",
    "HASH_BYTES",
    "LINK_CONTEXT",
    "OpLink",
    "check_link",
    "links_from_header",
    "links_to_header",
    "public_key_bytes",
    "public_key_from_bytes",
    "raise_if_forged",
    "raise_if_not_canonical",
    "raise_if_unchained",
    "seal",
]

LINK_CONTEXT = b"keel-op-v1\x00"
CHAIN_SKIPPED_HEADER = "keel-chain-skipped"  # Kafka header: links of refused seqs right before a record's op
HASH_BYTES = 32
_ZERO = bytes(HASH_BYTES)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a public key (what enrolment registers)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw()


def public_key_from_bytes(raw: bytes) -> Ed25519PublicKey:
    """A public key from its raw 32 bytes; IntegrityError if they are not one."""
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as error:
        raise IntegrityError(f"not an Ed25519 public key ({len(raw)} bytes)") from error


@dataclass(frozen=True, slots=True)
class OpLink:
    """One op's place in its device's chain; `hash` None for a seq whose content nobody could vouch for."""

    device_id: str
    seq: int
    prev_hash: bytes | None
    hash: bytes | None
    signature: bytes | None = None

    @classmethod
    def of(cls, event: ChangeEvent) -> OpLink:
        """The link an event claims."""
        return cls(event.device_id, event.device_seq, event.prev_hash, event.hash, event.signature)

    @property
    def is_gap(self) -> bool:
        """A consumed seq without a verifiable link (a refused op that was not signed properly)."""
        return self.hash is None

    def message(self) -> bytes:
        """The bytes the device signs (module docstring)."""
        if self.hash is None:
            raise IntegrityError(f"seq {self.seq} of device {self.device_id} has no hash to sign")
        return b"".join(
            (
                LINK_CONTEXT,
                self.device_id.encode(),
                b"\x00",
                self.seq.to_bytes(8, "big", signed=False),
                self.prev_hash or _ZERO,
                self.hash,
            )
        )

    def as_json(self) -> dict[str, Any]:
        """JSON form (hex bytes), as carried in the `keel-chain-skipped` header."""
        return {
            "seq": self.seq,
            "prev_hash": _hex(self.prev_hash),
            "hash": _hex(self.hash),
            "signature": _hex(self.signature),
        }

    @classmethod
    def from_json(cls, device_id: str, raw: Any) -> OpLink:
        """Inverse of `as_json`; IntegrityError when malformed."""
        seq = raw.get("seq") if isinstance(raw, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise IntegrityError(f"malformed chain link {raw!r:.120}: no usable seq")
        try:
            return cls(
                device_id, seq, _unhex(raw.get("prev_hash")), _unhex(raw.get("hash")), _unhex(raw.get("signature"))
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise IntegrityError(f"malformed chain link {raw!r:.120}: {error}") from error


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _unhex(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("hex text expected")
    return bytes.fromhex(value)


def seal(event: ChangeEvent, private_key: Ed25519PrivateKey, prev_hash: bytes | None) -> ChangeEvent:
    """`event` chained after `prev_hash`, hashed and signed by the device key."""
    chained = replace(event, prev_hash=prev_hash, hash=None, signature=None)
    digest = chained.content_hash()
    link = OpLink(event.device_id, event.device_seq, prev_hash, digest)
    return replace(chained, hash=digest, signature=private_key.sign(link.message()))


def check_link(link: OpLink, public_key: Ed25519PublicKey) -> None:
    """IntegrityError unless the link is signed by `public_key`."""
    if link.hash is None or link.signature is None:
        raise IntegrityError(f"unsigned op: device {link.device_id} seq {link.seq} carries no hash or signature")
    if len(link.hash) != HASH_BYTES or (link.prev_hash is not None and len(link.prev_hash) != HASH_BYTES):
        raise IntegrityError(f"bad hash length in device {link.device_id} seq {link.seq}")
    try:
        public_key.verify(link.signature, link.message())
    except InvalidSignature as error:
        raise IntegrityError(
            f"bad signature: device {link.device_id} seq {link.seq} is not signed by the device's registered key"
        ) from error


def raise_if_forged(event: ChangeEvent, public_key: Ed25519PublicKey) -> None:
    """IntegrityError unless `event` is unaltered since its device signed it (hash, then signature)."""
    if event.hash is None or event.signature is None:
        raise IntegrityError(
            f"unsigned op: device {event.device_id} has a registered key but seq {event.device_seq} is not signed"
        )
    actual = event.content_hash()
    if actual != event.hash:
        raise IntegrityError(
            f"content does not match its hash: device {event.device_id} seq {event.device_seq} "
            f"(event {event.event_id}) was altered after it was signed"
        )
    check_link(OpLink.of(event), public_key)


def raise_if_unchained(link: OpLink, previous: OpLink | None) -> None:
    """IntegrityError unless `link` follows `previous` (the device's link at seq - 1; None = not known)."""
    if previous is None or previous.is_gap:
        if link.seq == 1 and link.prev_hash is not None:
            raise IntegrityError(f"broken chain: device {link.device_id} seq 1 names a predecessor")
        return
    if previous.seq != link.seq - 1:
        raise IntegrityError(f"broken chain: seq {previous.seq} does not precede seq {link.seq}")
    if link.prev_hash != previous.hash:
        raise IntegrityError(
            f"broken chain: device {link.device_id} seq {link.seq} follows "
            f"{_short(link.prev_hash)}, but seq {previous.seq} hashes to {_short(previous.hash)} "
            "(an op was altered, dropped, reordered or replayed)"
        )


def _short(value: bytes | None) -> str:
    return "nothing" if value is None else value.hex()[:16]


def links_to_header(links: Sequence[OpLink]) -> bytes:
    """The `keel-chain-skipped` header value: links of consumed seqs that produced no record."""
    return json.dumps([link.as_json() for link in links], separators=(",", ":")).encode()


def links_from_header(device_id: str, value: bytes, *, limit: int = 1_000) -> list[OpLink]:
    """Inverse of `links_to_header`; IntegrityError when malformed or oversized."""
    if len(value) > limit * 400:
        raise IntegrityError(f"keel-chain-skipped header of {len(value)} bytes is too large")
    try:
        raw = json.loads(value)
    except (ValueError, UnicodeDecodeError) as error:
        raise IntegrityError(f"keel-chain-skipped header is not JSON: {error}") from error
    if not isinstance(raw, list) or len(raw) > limit:
        raise IntegrityError("keel-chain-skipped header is not a list of links")
    return [OpLink.from_json(device_id, item) for item in raw]


def raise_if_not_canonical(event: ChangeEvent, body: bytes | memoryview, writer_schema: Any) -> None:
    """IntegrityError unless `body` (its Avro encoding) decodes to the very canonical bytes the device hashed.

    Avro fills omitted fields with their defaults and types some values differently after decoding; a signed
    op whose round trip changes what was hashed would be refused downstream, so the gateway refuses it first.
    """
    try:
        decoded = ChangeEvent.from_avro(to_payload_form(decode_body(body, writer_schema)))
    except (DecodeError, KeyError, ValueError, TypeError) as error:
        raise IntegrityError(f"op {event.event_id} does not survive its Avro encoding: {error}") from error
    if decoded.canonical_bytes() != event.canonical_bytes():
        missing = sorted(set(decoded.payload or {}) - set(event.payload or {}))
        hint = f" (fields missing from the payload: {', '.join(missing)})" if missing else ""
        raise IntegrityError(
            f"op {event.event_id} is not in canonical form: its Avro encoding would change what was signed{hint}; "
            "signed ops must carry every field of their schema version"
        )
