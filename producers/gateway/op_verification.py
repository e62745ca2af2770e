"""The gateway's checks of signed ops, before anything is produced (docs/security.md, "Tamper evidence").

For a device with a registered key (or every device under `KEEL_REQUIRE_SIGNED_OPS`), each new op must
carry a hash that matches its content, a signature its key verifies, and a `prev_hash` equal to the hash of
the device's previous consumed seq. A refusal names the check (`unsigned`, `bad-hash`, `bad-signature`,
`unknown-key`, `broken-chain`, `not-canonical`) and is per op, like every other rejection: the seq is
consumed, so one bad op never blocks the ops after it.

The chain continues across refused seqs: an op refused for validation (its signature and link verified)
leaves its signed link as the predecessor of the next op; an op refused for integrity leaves a *gap* (there
is nothing trustworthy to chain from; the next op is checked for its signature only). Refused seqs produce no
record, so the next produced record of the device carries their links in its `keel-chain-skipped` header
and the projector's chain has no unexplained hole. The link of every consumed seq is kept with its outcome
in the push ledger, so all this holds across pushes and gateway instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keel.errors import IntegrityError
from producers.gateway.push_ledger import LedgerSession, Outcome, SeqOutcome
from producers.wire import AbandonedSeq, Rejection
from projections.device_keys import DeviceKey, DeviceKeyRegistry, key_for_seq
from schemas.envelope import ChangeEvent
from schemas.op_chain import (
    CHAIN_SKIPPED_HEADER,
    OpLink,
    check_link,
    links_to_header,
    public_key_from_bytes,
    raise_if_not_canonical,
    raise_if_unchained,
)

__all__ = ["INTEGRITY_CODES", "ChainVerifier", "DeviceChain"]

INTEGRITY_CODES = frozenset({"unsigned", "bad-hash", "bad-signature", "unknown-key", "broken-chain", "not-canonical"})
WINDOW = 64  # how far back a push looks for refused seqs whose links no record has carried yet


def _link_of(outcome: SeqOutcome, device_id: str) -> OpLink:
    return OpLink(device_id, outcome.seq, outcome.prev_hash, outcome.hash, outcome.signature)


@dataclass
class DeviceChain:
    """One device's chain during one push (under its ledger lock)."""

    device_id: str
    keys: list[DeviceKey] = field(default_factory=list)
    required: bool = False  # the device must sign: it has a key, or every device must
    previous: OpLink | None = None  # the link of the last consumed seq (a gap link when unknown)
    skipped: list[OpLink] = field(default_factory=list)  # refused seqs no produced record has carried yet

    @property
    def is_active(self) -> bool:
        """Whether this device's ops are checked and chained at all."""
        return self.required

    def _rejection(self, event: ChangeEvent, code: str, error: IntegrityError) -> Rejection:
        return Rejection(seq=event.device_seq, event_id=event.event_id, code=code, reason=str(error))

    def judge(self, event: ChangeEvent) -> Rejection | None:  # noqa: PLR0911 - one return per check
        """Why a new op fails its integrity checks (and the chain keeps a gap), or None."""
        key = key_for_seq(self.keys, event.device_seq)
        if key is None:
            if event.signature is not None or event.hash is not None:
                error = IntegrityError(f"op is signed, but device {self.device_id} has no registered key for it")
                return self._rejection(event, "unknown-key", error)
            if not self.required:
                return None  # a device without a key, where unsigned ops are allowed
            reason = f"device {self.device_id} must sign its ops (this gateway requires signed ops)"
            return self._rejection(event, "unsigned", IntegrityError(reason))
        if event.hash is None or event.signature is None:
            reason = f"unsigned op: device {self.device_id} has a registered key, so every op must be signed"
            return self._rejection(event, "unsigned", IntegrityError(reason))
        if event.content_hash() != event.hash:
            reason = f"content does not match its hash: seq {event.device_seq} was altered after it was signed"
            return self._rejection(event, "bad-hash", IntegrityError(reason))
        link = OpLink.of(event)
        try:
            check_link(link, public_key_from_bytes(key.public_key))
        except IntegrityError as error:
            return self._rejection(event, "bad-signature", error)
        try:
            raise_if_unchained(link, self.previous if self.previous is not None else None)
        except IntegrityError as error:
            return self._rejection(event, "broken-chain", error)
        return None

    def judge_encoding(self, event: ChangeEvent, body: bytes | memoryview, writer_schema: object) -> Rejection | None:
        """Why a signed op's Avro encoding would not verify downstream, or None."""
        if not self.required or event.hash is None:
            return None
        try:
            raise_if_not_canonical(event, body, writer_schema)
        except IntegrityError as error:
            return self._rejection(event, "not-canonical", error)
        return None

    def abandoned_link(self, abandoned: AbandonedSeq) -> OpLink:
        """The link an abandoned seq leaves: its signed link when it verifies, else a gap."""
        link = OpLink(
            self.device_id,
            abandoned.seq,
            bytes.fromhex(abandoned.prev_hash) if abandoned.prev_hash else None,
            bytes.fromhex(abandoned.hash) if abandoned.hash else None,
            bytes.fromhex(abandoned.signature) if abandoned.signature else None,
        )
        key = key_for_seq(self.keys, abandoned.seq)
        if key is None or link.hash is None:
            return OpLink(self.device_id, abandoned.seq, None, None)
        try:
            check_link(link, public_key_from_bytes(key.public_key))
            raise_if_unchained(link, self.previous)
        except IntegrityError:
            return OpLink(self.device_id, abandoned.seq, None, None)
        return link

    def headers(self) -> dict[str, bytes]:
        """Kafka headers for the record produced next: the links of the refused seqs just before it."""
        if not self.required or not self.skipped:
            return {}
        return {CHAIN_SKIPPED_HEADER: links_to_header(self.skipped)}

    def consume(self, seq: int, link: OpLink | None, *, produced: bool) -> OpLink | None:
        """Advance past a consumed seq; the link to store with its outcome (None for unchained devices)."""
        if not self.required:
            return None
        kept = link if link is not None else OpLink(self.device_id, seq, None, None)
        if produced:
            self.skipped.clear()
        else:
            self.skipped.append(kept)
        self.previous = kept
        return kept


class ChainVerifier:
    """Builds each push's `DeviceChain` from the device's keys and the ledger."""

    def __init__(self, keys: DeviceKeyRegistry, *, require_signed: bool = False) -> None:
        self.keys = keys
        self.require_signed = require_signed

    async def keys_of(self, device_id: str) -> list[DeviceKey]:
        """The device's keys; read *before* its ledger session opens (see `begin`)."""
        return await self.keys.keys_of(device_id)

    async def begin(
        self, device_id: str, session: LedgerSession, head: int, keys: list[DeviceKey] | None = None
    ) -> DeviceChain:
        """The chain state at `head`: its predecessor link and the refused seqs no record has carried.

        Pass the `keys` read before the session: reading them inside it takes a second pooled connection
        while the session holds one, and with as many devices pushing as the pool has connections every
        session waits for a connection no session gives back (PostgreSQL adapters share one pool).
        """
        if keys is None:
            keys = await self.keys.keys_of(device_id)
        if not keys and not self.require_signed:
            return DeviceChain(device_id)
        chain = DeviceChain(device_id, keys, required=True)
        if head == 0:
            return chain
        at_head = (await session.outcomes([head])).get(head)
        if at_head is None:
            chain.previous = OpLink(device_id, head, None, None)  # consumed before links were kept
            return chain
        chain.previous = _link_of(at_head, device_id)
        if at_head.outcome is Outcome.ACCEPTED:
            return chain
        window = await session.outcomes(list(range(max(1, head - WINDOW + 1), head + 1)))
        seq = head
        while (found := window.get(seq)) is not None and found.outcome is not Outcome.ACCEPTED:
            chain.skipped.insert(0, _link_of(found, device_id))
            seq -= 1
        return chain
