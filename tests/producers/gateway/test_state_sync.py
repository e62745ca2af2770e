"""/v1/entities reads every requested state in one store read, keeps the request's order, names the missing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from keel.errors import ValidationError
from producers.gateway.state_sync import MAX_SNAPSHOT_IDS, StateService
from producers.gateway.tokens import DeviceClaims
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.conflict_rules import EntityState
from projections.store import InMemoryProjectionStore
from schemas.domain_migrations import default_registry
from tests.consumers.helpers import EventFactory


class CountingStore(InMemoryProjectionStore):
    """The fake store, counting reads of states."""

    reads: int = 0

    async def entity_state(self, entity_type: str, tenant_id: str, entity_id: str) -> EntityState | None:
        self.reads += 1
        return await super().entity_state(entity_type, tenant_id, entity_id)

    async def entity_states(
        self, entity_type: str, tenant_id: str, entity_ids: Sequence[str]
    ) -> dict[str, EntityState]:
        self.reads += 1
        return await super().entity_states(entity_type, tenant_id, entity_ids)


async def test_snapshots_take_one_read_whatever_the_number_of_ids() -> None:
    store = CountingStore()
    factory = EventFactory(tenant_id="acme")
    events = [factory.event("phone", f"t-{n}", title=str(n)) for n in range(40)]
    sourced = tuple(SourcedEvent(e, SourcePosition("k.task.changes", 0, i), 1) for i, e in enumerate(events))
    advance = OffsetAdvance(TopicPartition("k.task.changes", 0), None, len(events))
    assert (await store.apply_batch(ProjectionBatch("g", (advance,), sourced))).committed
    service = StateService(store, default_registry())
    claims = DeviceClaims("acme", "laptop", {"task": 2}, 0)

    wanted = ["t-7", "nope", "t-3", "t-7", "", *[f"t-{n}" for n in range(10, 40)]]
    response = await service.snapshots(claims, "task", wanted)
    assert store.reads == 1, "one read for 32 distinct ids, not one per id"
    assert [s.entity_id for s in response.snapshots] == ["t-7", "t-3", *[f"t-{n}" for n in range(10, 40)]]
    assert response.missing == ["nope"]
    assert all(s.version == 2 for s in response.snapshots)

    store.reads = 0
    assert (await service.snapshots(claims, "task", ["", ""])).snapshots == []
    assert store.reads == 0, "nothing asked, nothing read"
    with pytest.raises(ValidationError, match=f"at most {MAX_SNAPSHOT_IDS} ids"):
        await service.snapshots(claims, "task", [f"x-{n}" for n in range(MAX_SNAPSHOT_IDS + 1)])
