"""The merge is order-independent: any permutation of one event set gives one state and one decision set."""

from __future__ import annotations

import itertools
import random
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from keel.hlc import HlcTimestamp
from projections.conflict_rules import (
    ConflictRules,
    FieldState,
    LastWriterWins,
    WriteStamp,
    apply_event,
    merge_events,
)
from schemas.envelope import ChangeEvent, Op, Override

DEFAULTS = {"title": "", "description": "", "priority": 0}


def event(
    device: str,
    seq: int,
    physical: int,
    op: Op = Op.UPSERT,
    base: int | None = None,
    logical: int = 0,
    **values: object,
) -> ChangeEvent:
    return ChangeEvent(
        event_id=str(uuid.UUID(int=random.Random(f"{device}{seq}").getrandbits(128))),
        tenant_id="t",
        device_id=device,
        device_seq=seq,
        entity_type="task",
        entity_id="e1",
        op=op,
        hlc=HlcTimestamp(physical, logical, device),
        schema_version=3,
        payload=None if op is Op.DELETE else dict(values),
        changed_fields=tuple(values),
        base_hlc=HlcTimestamp(base, 0, "x") if base is not None else None,
    )


def test_concurrent_edits_keep_the_later_one_and_explain_it() -> None:
    a = event("dev-a", 1, 1_000, title="from a")
    b = event("dev-b", 1, 2_000, title="from b")
    outcome = merge_events([a, b])
    assert outcome.state.visible(DEFAULTS)["title"] == "from b"
    (decision,) = outcome.decisions
    assert (decision.field, decision.winner_device_id, decision.loser_device_id) == ("title", "dev-b", "dev-a")
    assert decision.explanation.startswith("kept the later edit from dev-b")
    assert "made without seeing each other" in decision.explanation


def test_a_sequential_overwrite_is_not_a_conflict() -> None:
    a = event("dev-a", 1, 1_000, title="v1")
    b = event("dev-b", 1, 2_000, base=1_000, title="v2")  # dev-b had seen a's write
    outcome = merge_events([a, b])
    assert outcome.state.visible(DEFAULTS)["title"] == "v2"
    assert outcome.decisions == ()


def test_tie_on_clock_is_broken_by_device_id_and_says_so() -> None:
    a = event("dev-a", 1, 5_000, title="a")
    b = event("dev-b", 1, 5_000, title="b")
    outcome = merge_events([b, a])
    assert outcome.state.visible(DEFAULTS)["title"] == "b"
    assert "tie broken by device id" in outcome.decisions[0].explanation


def test_delete_then_later_edit_restores_with_only_the_new_fields() -> None:
    create = event("dev-a", 1, 1_000, title="t", priority=2)
    delete = event("dev-b", 1, 2_000, op=Op.DELETE, base=1_000)
    edit = event("dev-c", 1, 3_000, base=1_000, title="back")  # saw the create, not the delete
    state = merge_events([create, delete]).state
    assert state.visible(DEFAULTS) is None
    outcome = merge_events([edit], state=state)
    assert outcome.state.visible(DEFAULTS) == {"title": "back", "description": "", "priority": 0}
    assert [d.rule for d in outcome.decisions] == ["edit-restores"]


def test_override_beats_concurrent_edits_and_later_edits_beat_the_override() -> None:
    a = event("dev-a", 1, 1_000, title="a")
    b = event("dev-b", 1, 1_500, title="b")
    override = ChangeEvent(
        event_id="ov-1",
        tenant_id="t",
        device_id="operator",
        device_seq=1,
        entity_type="task",
        entity_id="e1",
        op=Op.OVERRIDE,
        hlc=HlcTimestamp(1_500, 0, "operator"),
        schema_version=3,
        payload={"title": "a"},
        changed_fields=("title",),
        base_hlc=HlcTimestamp(1_500, 0, "x"),
        override=Override(reason="a is right", actor="alice", supersedes=(b.event_id,)),
    )
    outcome = merge_events([a, b, override])
    assert outcome.state.visible(DEFAULTS)["title"] == "a"
    manual = [d for d in outcome.decisions if d.rule == "manual-override"]
    assert len(manual) == 1
    assert "alice resolved this by hand: a is right" in manual[0].explanation
    later = event("dev-b", 2, 2_000, base=1_500, title="newer")
    assert merge_events([later], state=outcome.state).state.visible(DEFAULTS)["title"] == "newer"


@st.composite
def event_sets(draw: st.DrawFn) -> list[ChangeEvent]:
    count = draw(st.integers(2, 7))
    events = []
    for index in range(count):
        device = draw(st.sampled_from(["dev-a", "dev-b", "dev-c"]))
        physical = draw(st.integers(1, 6)) * 1000
        op = draw(st.sampled_from([Op.UPSERT, Op.UPSERT, Op.UPSERT, Op.DELETE]))
        base = draw(st.one_of(st.none(), st.integers(1, 6).map(lambda x: x * 1000)))
        fields = draw(st.sets(st.sampled_from(["title", "description", "priority"]), min_size=1))
        values = {
            name: draw(st.sampled_from(["x", "y", "z"])) if name != "priority" else draw(st.integers(0, 3))
            for name in fields
        }
        events.append(event(device, index + 1, physical, op=op, base=base, logical=draw(st.integers(0, 2)), **values))
    return events


@settings(max_examples=150, deadline=None)
@given(event_sets(), st.randoms(use_true_random=False))
def test_every_permutation_gives_one_state_and_one_decision_set(events: list[ChangeEvent], rng: random.Random) -> None:
    reference = merge_events(events)
    orders = (
        list(itertools.permutations(events))
        if len(events) <= 4
        else [rng.sample(events, len(events)) for _ in range(20)]
    )
    for order in orders:
        outcome = merge_events(order)
        assert outcome.state.visible(DEFAULTS) == reference.state.visible(DEFAULTS)
        assert outcome.state.fields == reference.state.fields
        assert outcome.state.deleted == reference.state.deleted
        assert {d.decision_id for d in outcome.decisions} == {d.decision_id for d in reference.decisions}
        assert outcome.decisions == reference.decisions


@settings(max_examples=100, deadline=None)
@given(event_sets())
def test_applying_an_event_twice_changes_nothing(events: list[ChangeEvent]) -> None:
    once = merge_events(events)
    twice = merge_events([*events, *events])
    assert twice.state.fields == once.state.fields
    assert twice.decisions == once.decisions
    again = apply_event(once.state, events[0])
    assert again.state == once.state
    assert again.decisions == ()


def stamps() -> st.SearchStrategy[FieldState]:
    return st.builds(
        lambda p, lo, r, d, v: FieldState(v, WriteStamp(p, lo, r, d, f"e{p}{lo}{r}{d}")),
        st.integers(0, 3),
        st.integers(0, 2),
        st.integers(0, 1),
        st.sampled_from("ab"),
        st.integers(),
    )


@given(stamps(), stamps(), stamps())
def test_registered_rules_are_semilattice_joins(x: FieldState, y: FieldState, z: FieldState) -> None:
    rules = ConflictRules()
    for rule in [rules.default, *rules.rules.values(), LastWriterWins()]:
        assert rule.join(x, y).stamp == rule.join(y, x).stamp, rule.name
        assert rule.join(rule.join(x, y), z).stamp == rule.join(x, rule.join(y, z)).stamp, rule.name
        assert rule.join(x, x) == x, rule.name
