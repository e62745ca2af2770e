"""Entity states survive the JSON column, and a compacted tombstone keeps late writes from resurrecting."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.conflict_rules import merge_events
from projections.state_codec import compact_tombstone, state_from_json, state_to_json
from schemas.envelope import Op
from tests.consumers.helpers import EventFactory

DEFAULTS = {"title": "", "priority": 0, "labels": []}


@st.composite
def histories(draw: st.DrawFn) -> list:
    factory = EventFactory(seed=draw(st.integers(0, 10_000)))
    events = []
    for _ in range(draw(st.integers(1, 12))):
        device = draw(st.sampled_from(["a", "b", "c"]))
        if draw(st.booleans()) and events:
            events.append(
                factory.event(device, "e1", op=Op.DELETE, base_ms=draw(st.none() | st.just(factory.clock_ms)))
            )
        else:
            events.append(
                factory.event(
                    device,
                    "e1",
                    base_ms=draw(st.none() | st.just(factory.clock_ms)),
                    title=draw(st.text(max_size=5)),
                    labels=draw(st.lists(st.text(max_size=3), max_size=2)),
                )
            )
    return events


@settings(max_examples=100, deadline=None)
@given(histories())
def test_state_round_trips_through_json(events: list) -> None:
    state = merge_events(events).state
    stored = json.loads(json.dumps(state_to_json(state)))
    assert state_from_json(state.tenant_id, state.entity_type, state.entity_id, stored) == state


def test_compacted_tombstone_hides_older_late_writes_and_yields_to_newer_ones() -> None:
    factory = EventFactory()
    create = factory.event("a", "e1", title="first", priority=2)
    delete = factory.event("b", "e1", op=Op.DELETE, base_ms=create.hlc.physical_ms)
    late_old = factory.event("c", "e1", physical_ms=create.hlc.physical_ms + 0, title="offline edit")
    newer = factory.event("c", "e1", title="recreated")
    deleted = merge_events([create, delete]).state
    compact = compact_tombstone(deleted)
    assert compact.history == ()
    assert compact.fields == {}
    for state in (deleted, compact):
        assert merge_events([late_old], state=state).state.visible(DEFAULTS) is None
        assert merge_events([newer], state=state).state.visible(DEFAULTS) == {**DEFAULTS, "title": "recreated"}
    with pytest.raises(ValueError, match="only a deleted entity"):
        compact_tombstone(merge_events([create]).state)
