"""Decisions read back in words, and which overrides settle which decisions."""

from __future__ import annotations

from projections.conflict_rules import merge_events
from projections.decisions import DecisionRecord, decision_from_json, decision_to_json, describe, resolutions
from projections.overrides import OverrideRequest, build_override
from tests.consumers.helpers import EventFactory


def test_a_decision_reads_as_sentences_and_suggests_the_way_back() -> None:
    factory = EventFactory()
    a = factory.event("phone", "t1", title="Buy milk")
    b = factory.event("laptop", "t1", title="Buy oat milk")
    (decision,) = merge_events([a, b]).decisions
    assert decision_from_json(decision_to_json(decision)) == decision
    text = describe(DecisionRecord(decision, 1_750_000_000_000))
    assert "task t1 of tenant tenant-a: field 'title'" in text
    assert 'Kept:      "Buy oat milk" from laptop' in text
    assert 'Discarded: "Buy milk" from phone' in text
    assert "Why: kept the later edit from laptop" in text
    assert f"keel conflicts resolve {decision.decision_id} --keep loser" in text


def test_an_override_settles_the_decision_it_supersedes() -> None:
    factory = EventFactory()
    a = factory.event("phone", "t1", title="Buy milk")
    b = factory.event("laptop", "t1", title="Buy oat milk")
    outcome = merge_events([a, b])
    (decision,) = outcome.decisions
    override = build_override(
        decision, outcome.state, OverrideRequest(decision.decision_id, "oat is right", "ana", keep="winner"), seq=1
    )
    after = merge_events([override], state=outcome.state)
    every = [decision, *after.decisions]
    assert resolutions(every) == {decision.decision_id: override.event_id}
    manual = next(d for d in after.decisions if d.rule == "manual-override")
    assert "ana resolved this by hand: oat is right" in describe(DecisionRecord(manual, 0))
