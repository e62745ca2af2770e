"""Chain heads: the projector's record of each signed device's hash chain, checked link by link.

Records of one device reach the projector through several topics and partitions, in any interleaving,
so a link is checked against whichever neighbours are already known — its predecessor (seq - 1) and its
successor (seq + 1) — when it arrives; whichever of two links that disagree arrives second is refused
(dead-lettered with the reason). A seq the gateway refused produced no record: the next record of the
device carries that seq's signed link (or a gap marker) in its `keel-chain-skipped` header, so the chain
has no unexplained hole. A device's *head* is the highest seq up to which every seq is linked; a dropped
record keeps the head below it for good, which `keel audit verify` reports.

The pure part (`judge`, `advance`) is shared by the in-memory book below and the PostgreSQL adapter
(`projections/chain_heads_pg_adapter.py`), which runs in the batch's transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from keel.errors import IntegrityError
from schemas.op_chain import OpLink, raise_if_unchained

__all__ = [
    "ChainEntry",
    "ChainHead",
    "InMemoryChainBook",
    "Judgement",
    "advance",
    "entries_of",
    "judge",
    "neighbour_keys",
]

Owner = TypeVar("Owner")
LinkKey = tuple[str, int]  # (device_id, seq)


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One consumed seq of a signed device: an op in the log, or a seq the gateway refused."""

    tenant_id: str
    link: OpLink
    kind: str  # 'op', 'skipped' (a refused op's signed link) or 'gap' (refused without a usable link)
    event_id: str | None = None

    @property
    def key(self) -> LinkKey:
        """(device_id, seq)."""
        return (self.link.device_id, self.link.seq)

    def agrees_with(self, other: ChainEntry) -> bool:
        """Whether two entries for one seq say the same (a redelivery), not two different ops."""
        return (self.link.hash, self.link.prev_hash) == (other.link.hash, other.link.prev_hash) and (
            self.kind == other.kind or {self.kind, other.kind} <= {"skipped", "gap"}
        )


@dataclass(frozen=True, slots=True)
class ChainHead:
    """A device's highest seq with every seq up to it linked, and that seq's hash (None after a gap)."""

    tenant_id: str
    device_id: str
    head_seq: int = 0
    head_hash: bytes | None = None


def entries_of(tenant_id: str, event_id: str, op: OpLink, skipped: Iterable[OpLink]) -> list[ChainEntry]:
    """The entries one record brings: the links of the refused seqs before it, then its own op."""
    entries = [ChainEntry(tenant_id, link, "gap" if link.is_gap else "skipped") for link in skipped]
    entries.sort(key=lambda entry: entry.link.seq)
    entries.append(ChainEntry(tenant_id, op, "op", event_id))
    return entries


@dataclass
class Judgement(Generic[Owner]):
    """Entries to record, and the owners (records) refused with the reason."""

    accepted: list[ChainEntry] = field(default_factory=list)
    refused: list[tuple[Owner, str]] = field(default_factory=list)


def _raise_if_disagrees(entry: ChainEntry, known: Mapping[LinkKey, ChainEntry]) -> bool:
    """IntegrityError if `entry` contradicts a neighbour; True if it repeats what is known (nothing to add)."""
    device, seq = entry.key
    same = known.get(entry.key)
    if same is not None:
        if same.agrees_with(entry):
            return True
        raise IntegrityError(
            f"conflicting link: device {device} seq {seq} is already linked as {same.kind} "
            f"{(same.link.hash or b'').hex()[:16] or 'gap'} (event {same.event_id}); this record is a replay "
            "with different content"
        )
    if entry.kind == "gap":
        return False
    # A predecessor not seen yet is checked from the other side when it arrives.
    previous = known.get((device, seq - 1))
    raise_if_unchained(entry.link, previous.link if previous is not None else None)
    following = known.get((device, seq + 1))
    if following is not None and following.kind != "gap":
        raise_if_unchained(following.link, entry.link)
    return False


def judge(
    groups: Sequence[tuple[Owner, Sequence[ChainEntry]]], known: Mapping[LinkKey, ChainEntry]
) -> Judgement[Owner]:
    """Check each owner's entries against what is known and what earlier owners brought; all or none per owner."""
    seen: dict[LinkKey, ChainEntry] = dict(known)
    judgement: Judgement[Owner] = Judgement()
    for owner, entries in groups:
        tentative = dict(seen)
        fresh: list[ChainEntry] = []
        try:
            for entry in entries:
                if not _raise_if_disagrees(entry, tentative):
                    tentative[entry.key] = entry
                    fresh.append(entry)
        except IntegrityError as error:
            judgement.refused.append((owner, str(error)))
            continue
        seen = tentative
        judgement.accepted.extend(fresh)
    return judgement


def advance(head: ChainHead, links: Mapping[int, ChainEntry]) -> ChainHead:
    """Move a head over every consecutive linked seq after it (`links` by seq, of one device)."""
    seq, digest = head.head_seq, head.head_hash
    while (nxt := links.get(seq + 1)) is not None:
        seq, digest = seq + 1, nxt.link.hash
    return ChainHead(head.tenant_id, head.device_id, seq, digest)


def neighbour_keys(entries: Iterable[ChainEntry]) -> list[LinkKey]:
    """Every (device, seq) a judgement of `entries` may need: each seq and its two neighbours."""
    wanted = {(e.link.device_id, s) for e in entries for s in (e.link.seq - 1, e.link.seq, e.link.seq + 1) if s >= 1}
    return sorted(wanted)


class InMemoryChainBook:
    """Chain links and heads in dicts (the in-memory projection store's part); commit after a clean judgement."""

    def __init__(self) -> None:
        self.links: dict[LinkKey, ChainEntry] = {}
        self.heads: dict[str, ChainHead] = {}

    def judge_and_record(self, groups: Sequence[tuple[Owner, Sequence[ChainEntry]]]) -> list[tuple[Owner, str]]:
        """Refused owners (nothing recorded then), or record every entry and move the heads."""
        judgement = judge(groups, self.links)
        if judgement.refused:
            return judgement.refused
        touched: dict[str, str] = {}
        for entry in judgement.accepted:
            self.links[entry.key] = entry
            touched[entry.link.device_id] = entry.tenant_id
        by_device: dict[str, dict[int, ChainEntry]] = defaultdict(dict)
        for (device, seq), entry in self.links.items():
            if device in touched:
                by_device[device][seq] = entry
        for device, tenant in touched.items():
            head = self.heads.get(device, ChainHead(tenant, device))
            self.heads[device] = advance(head, by_device[device])
        return []
