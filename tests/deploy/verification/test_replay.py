"""The clean replay equals what a projection store reaches, and its digests per version equal the gateway's."""

from __future__ import annotations

import dataclasses
import random

from deploy.verification.replay import digests_in_versions, replay
from producers.gateway.state_sync import StateService
from producers.gateway.tokens import DeviceClaims
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, SourcePosition, TopicPartition
from projections.digest import digests_by_tenant
from projections.store import InMemoryProjectionStore
from schemas.domain_migrations import default_registry
from schemas.envelope import ChangeEvent
from tests.consumers.helpers import EventFactory

TOPIC = "r.task.changes"


def sourced(events: list[ChangeEvent]) -> list[SourcedEvent]:
    return [SourcedEvent(e, SourcePosition(TOPIC, 0, offset)) for offset, e in enumerate(events)]


def events() -> list[ChangeEvent]:
    acme = EventFactory(seed=5, tenant_id="acme").random_task_events(60, devices=4, entities=6)
    globex = EventFactory(seed=6, tenant_id="globex", device_prefix="g").random_task_events(30, devices=3, entities=4)
    return acme + globex


async def projected(log: list[SourcedEvent], seed: int) -> InMemoryProjectionStore:
    """Through the store, in random batch sizes, like a projector that crashed and resumed."""
    store = InMemoryProjectionStore()
    rng = random.Random(seed)
    offset = 0
    while offset < len(log):
        size = rng.randint(1, 7)
        chunk = log[offset : offset + size]
        advance = OffsetAdvance(TopicPartition(TOPIC, 0), offset or None, offset + len(chunk))
        outcome = await store.apply_batch(ProjectionBatch("g", (advance,), tuple(chunk)))
        assert outcome.committed
        offset += len(chunk)
    return store


async def test_the_replay_reaches_the_state_and_decisions_of_a_projection_store() -> None:
    written = events()
    log = sourced(written + written[10:25])  # redeliveries: producer retries, a resend after a crash
    clean = replay(log)
    assert (clean.applied, clean.redeliveries, clean.replayed) == (len(written), 15, ())
    store = await projected(log, seed=3)
    assert digests_by_tenant(clean.visible_rows("task")) == digests_by_tenant(await store.visible_rows("task"))
    assert {d.decision_id for d in clean.decisions} == set(store.decided)
    assert clean.decisions, "the event set has concurrent edits"


def test_a_replayed_seq_with_another_event_is_set_aside_like_the_projector_does() -> None:
    written = events()
    impostor = dataclasses.replace(written[3], event_id="00000000-0000-4000-8000-000000000000")
    clean = replay(sourced([*written, impostor]))
    assert [s.event.event_id for s in clean.replayed] == [impostor.event_id]
    assert clean.applied == len(written)


async def test_digests_in_versions_equal_what_the_gateway_tells_a_device_on_that_version() -> None:
    clean = replay(sourced(events()))
    store = await projected(sourced(events()), seed=1)
    rows = {"task": clean.visible_rows("task")}
    ours = digests_in_versions(rows, {"task": [1, 2, 3]}, default_registry())
    gateway = StateService(store, default_registry())
    for tenant in ("acme", "globex"):
        for version in (1, 2, 3):
            claims = DeviceClaims(tenant, "device", {"task": version}, expires_at_ms=0)
            answer = await gateway.digest(claims)
            assert ours[(tenant, "task", version)] == answer.entities["task"].digest, (tenant, version)
    assert len({ours[("acme", "task", v)] for v in (1, 2, 3)}) == 3, "versions show different fields"
