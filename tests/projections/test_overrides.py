"""Override events: the clock beats everything involved, supersedes names the discarded side, input is checked."""

from __future__ import annotations

import pytest

from keel.errors import ConfigurationError, ValidationError
from projections.conflict_rules import WriteStamp, merge_events
from projections.overrides import OverrideRequest, build_override
from schemas.envelope import Op
from tests.consumers.helpers import EventFactory

DEFAULTS = {
    "title": "",
    "description": "",
    "due": None,
    "due_at": None,
    "status": "TODO",
    "project_id": None,
    "priority": 0,
    "labels": [],
}


def conflict(factory: EventFactory):  # type: ignore[no-untyped-def]
    a = factory.event("phone", "t1", title="milk", priority=1)
    b = factory.event("laptop", "t1", title="oat milk", physical_ms=a.hlc.physical_ms + 5_000)
    outcome = merge_events([a, b])
    return a, b, outcome


def test_keep_loser_restores_the_losing_value_with_a_clock_above_every_write() -> None:
    factory = EventFactory()
    a, b, outcome = conflict(factory)
    (decision,) = outcome.decisions
    event = build_override(
        decision,
        outcome.state,
        OverrideRequest(decision.decision_id, "phone was right", "ana", keep="loser"),
        seq=7,
        now_ms=a.hlc.physical_ms,  # a wall clock behind the writes: the HLC still moves past them
    )
    assert event.op is Op.OVERRIDE
    assert (event.device_id, event.device_seq) == ("operator:ana", 7)
    assert event.hlc > b.hlc
    assert event.base_hlc == b.hlc
    assert event.changed_fields == ("title",)
    assert event.override is not None
    assert event.override.supersedes == (b.event_id,)
    assert event.override.decision_id == decision.decision_id
    after = merge_events([event], state=outcome.state).state
    assert after.visible(DEFAULTS)["title"] == "milk"
    assert after.visible(DEFAULTS)["priority"] == 1
    assert WriteStamp.of(event) > max(s.stamp for s in outcome.state.fields.values())


def test_set_values_are_validated_against_the_current_schema() -> None:
    factory = EventFactory()
    _, _, outcome = conflict(factory)
    (decision,) = outcome.decisions
    event = build_override(
        decision,
        outcome.state,
        OverrideRequest(decision.decision_id, "both wrong", "ana", set_values={"title": "tea"}),
        seq=1,
    )
    assert event.override is not None
    assert set(event.override.supersedes) == {decision.winner_event_id, decision.loser_event_id}
    with pytest.raises(ValidationError, match="priority"):
        build_override(decision, outcome.state, OverrideRequest("x", "r", "ana", set_values={"priority": 9}), seq=2)
    with pytest.raises(ValidationError, match="no field 'colour'"):
        build_override(decision, outcome.state, OverrideRequest("x", "r", "ana", set_values={"colour": 1}), seq=2)
    with pytest.raises(ValidationError, match="either --keep"):
        build_override(decision, outcome.state, OverrideRequest("x", "r", "ana"), seq=2)
    with pytest.raises(ValidationError, match="--reason"):
        build_override(decision, outcome.state, OverrideRequest("x", " ", "ana", keep="winner"), seq=2)


def test_keeping_the_edit_over_a_delete_restores_it_and_keeping_the_delete_deletes() -> None:
    factory = EventFactory()
    create = factory.event("phone", "t1", title="milk")
    edit = factory.event("phone", "t1", base_ms=create.hlc.physical_ms, title="more milk")
    delete = factory.event("laptop", "t1", op=Op.DELETE, base_ms=create.hlc.physical_ms)
    outcome = merge_events([create, edit, delete])
    decision = next(d for d in outcome.decisions if d.rule == "delete-wins")
    assert outcome.state.visible(DEFAULTS) is None
    restore = build_override(
        decision, outcome.state, OverrideRequest(decision.decision_id, "r", "ana", keep="loser"), seq=1
    )
    assert merge_events([restore], state=outcome.state).state.visible(DEFAULTS) == {**DEFAULTS, "title": "more milk"}
    again = build_override(
        decision, outcome.state, OverrideRequest(decision.decision_id, "r", "ana", keep="winner"), seq=2
    )
    assert again.payload is None
    assert merge_events([again], state=outcome.state).state.visible(DEFAULTS) is None
    forgotten = merge_events([create, delete]).state  # the edit's values are not in this history
    with pytest.raises(ConfigurationError, match="no longer in the entity's write history"):
        build_override(decision, forgotten, OverrideRequest(decision.decision_id, "r", "ana", keep="loser"), seq=3)
