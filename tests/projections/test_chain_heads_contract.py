"""One contract, two projection stores: signed devices' chain links are checked against their neighbours in
any arrival order, contradictions are refused (uncommitted, with the reason), heads move over refused seqs."""

from __future__ import annotations

from dataclasses import replace

from projections.batch import BatchOutcome, OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.chain_heads import entries_of
from projections.store import InMemoryProjectionStore
from schemas.envelope import ChangeEvent
from schemas.op_chain import OpLink
from tests.projections.fixtures import Stores
from tests.support.signed_device import SignedDevice

TOPIC = "k.task.changes"


class Feed:
    """Batches of one partition with consecutive offsets."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = TopicPartition(TOPIC, partition)
        self.offset = 0
        self.stored: int | None = None

    def batch(self, *items: tuple[ChangeEvent, list[OpLink]]) -> ProjectionBatch:
        events = []
        for event, skipped in items:
            chain = tuple(entries_of(event.tenant_id, event.event_id, OpLink.of(event), skipped))
            position = SourcePosition(TOPIC, self.partition.partition, self.offset)
            events.append(SourcedEvent(event, position, 1, chain=chain))
            self.offset += 1
        return ProjectionBatch("g", (OffsetAdvance(self.partition, self.stored, self.offset),), tuple(events))

    async def apply(self, stores: Stores, *items: tuple[ChangeEvent, list[OpLink]]) -> BatchOutcome:
        """Apply a batch; a refused one is then skipped as the runtime does (dead letters, offsets committed)."""
        outcome = await stores.store.apply_batch(self.batch(*items))
        if not outcome.committed:
            skip = ProjectionBatch("g", (OffsetAdvance(self.partition, self.stored, self.offset),))
            assert (await stores.store.apply_batch(skip)).committed
        self.stored = self.offset
        return outcome


async def heads(stores: Stores) -> dict[str, tuple[int, bytes | None]]:
    store = stores.store
    if isinstance(store, InMemoryProjectionStore):
        return {d: (h.head_seq, h.head_hash) for d, h in store.chains.heads.items()}
    async with store.pool.acquire() as connection:  # type: ignore[attr-defined]
        rows = await connection.fetch(f'SELECT device_id, head_seq, head_hash FROM "{store.schema}".chain_heads')  # type: ignore[attr-defined]
    return {r["device_id"]: (r["head_seq"], bytes(r["head_hash"]) if r["head_hash"] else None) for r in rows}


async def test_links_arriving_in_any_order_move_the_head_over_refused_seqs(stores: Stores) -> None:
    device = SignedDevice("d-1", "tenant-a")
    first, refused, third, fourth = (device.op(f"t-{n}", title=str(n)) for n in range(1, 5))
    gap = OpLink("d-1", 5, None, None)
    sixth = device.op("t-6", seq=6, prev=None, title="after a gap")
    feed_a, feed_b = Feed(0), Feed(1)
    assert (await feed_a.apply(stores, (fourth, []))).committed
    assert await heads(stores) == {"d-1": (0, None)}, "seq 4 waits for 1..3"
    assert (await feed_b.apply(stores, (first, []), (third, [OpLink.of(refused)]))).committed
    assert await heads(stores) == {"d-1": (4, fourth.hash)}
    assert (await feed_a.apply(stores, (sixth, [gap]))).committed
    assert await heads(stores) == {"d-1": (6, sixth.hash)}


async def test_a_link_that_contradicts_a_neighbour_is_refused_with_the_reason(stores: Stores) -> None:
    device = SignedDevice("d-1", "tenant-a")
    first, second = device.op("t-1", title="1"), device.op("t-2", title="2")
    forked = device.op("t-3", seq=3, prev=first.hash, title="chained after seq 1")
    fork_at_two = replace(device.op("t-2", seq=2, prev=first.hash, title="other"), event_id=second.event_id)
    feed = Feed()
    assert (await feed.apply(stores, (first, []), (second, []))).committed
    outcome = await feed.apply(stores, (forked, []))
    assert not outcome.committed
    [(refused, reason)] = outcome.refused
    assert refused.event.event_id == forked.event_id
    assert reason.startswith("broken chain: device d-1 seq 3 follows")
    skip = OpLink.of(fork_at_two)  # seq 2 announced as refused at the gateway, but seq 2 is an op in the log
    late = device.op("t-4", seq=4, prev=None, title="4")
    again = await feed.apply(stores, (late, [skip]))
    assert not again.committed
    assert "conflicting link: device d-1 seq 2 is already linked as op" in again.refused[0][1]
    assert await heads(stores) == {"d-1": (2, second.hash)}
