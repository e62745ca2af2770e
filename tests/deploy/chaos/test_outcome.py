"""The battery's verdict on crafted histories: the checker's findings fail a scenario, whatever their kind.

Each history is a clean run with one fault planted — an acknowledged op lost, an op applied twice, a seq
gap, a seq inversion, a device digest diverging — judged by the checker and turned into a scenario
outcome as every scenario does (`ScenarioOutcome.judged`); the outcome must name the fault and fail.
"""

from __future__ import annotations

import dataclasses

import pytest

from deploy.chaos.scenario import Check, ScenarioOutcome, Size, every_scenario, scenario_named
from deploy.verification.checker import AckedOp, AppliedOp, DeviceDigest, Evidence, LogEntry, check
from keel.errors import ConfigurationError

TOPIC = "chaos.task.changes"


def history(seqs: dict[str, list[int]]) -> Evidence:
    """A clean history: every device's ops acknowledged, logged once in order, applied once, digests equal."""
    acked: list[AckedOp] = []
    applied: list[AppliedOp] = []
    log: list[LogEntry] = []
    for partition, (device, numbers) in enumerate(sorted(seqs.items())):
        for offset, seq in enumerate(numbers):
            event_id = f"{device}-e{seq}"
            acked.append(AckedOp(device, seq, event_id, f"fp-{event_id}"))
            applied.append(AppliedOp(device, seq, event_id, TOPIC, partition, offset))
            log.append(LogEntry(device, seq, event_id, f"fp-{event_id}", TOPIC, partition, offset))
    digests = {("acme", "task", 3): "d-acme"}
    return Evidence(
        acknowledged=acked,
        applied=applied,
        feed_event_ids=[row.event_id for row in applied],
        log=log,
        device_digests=[DeviceDigest(device, "acme", "task", 3, "d-acme") for device in seqs],
        projection_digests=digests,
        replay_digests=dict(digests),
    )


def judged(evidence: Evidence) -> ScenarioOutcome:
    return ScenarioOutcome.judged(check(evidence), events=len(evidence.acknowledged))


def failed_checks(outcome: ScenarioOutcome) -> list[str]:
    return [c.name for c in outcome.checks if not c.ok]


CLEAN = {"phone": [1, 2, 3, 4, 5], "laptop": [1, 2, 3]}


def test_a_clean_history_passes() -> None:
    outcome = judged(history(CLEAN))
    assert (outcome.lost, outcome.duplicated, outcome.diverged) == (0, 0, False)
    assert outcome.ok
    assert outcome.checker is not None
    assert outcome.checker["ok"] is True
    assert outcome.checker["acknowledged"] == outcome.checker["applied"] == 8


def test_a_lost_acknowledged_op_fails_the_run() -> None:
    evidence = history(CLEAN)
    rows = [r for r in evidence.applied if r.key != ("phone", 5)]  # the log has it; the projection never applied it
    outcome = judged(dataclasses.replace(evidence, applied=rows, feed_event_ids=[r.event_id for r in rows]))
    assert outcome.lost == 1
    assert not outcome.ok
    assert outcome.checker is not None
    assert [f["kind"] for f in outcome.checker["findings"]] == ["lost"]


def test_an_acknowledged_op_missing_from_the_log_fails_its_own_check() -> None:
    evidence = history(CLEAN)
    log = [e for e in evidence.log or () if e.key != ("laptop", 3)]
    rows = [r for r in evidence.applied if r.key != ("laptop", 3)]
    outcome = judged(dataclasses.replace(evidence, log=log, applied=rows, feed_event_ids=[r.event_id for r in rows]))
    assert outcome.lost == 1
    assert "nothing acknowledged missing from the log" in failed_checks(outcome)


def test_an_op_applied_twice_fails_the_run() -> None:
    evidence = history(CLEAN)
    again = dataclasses.replace(evidence.applied[1], log_offset=99)  # a second application from a later copy
    outcome = judged(dataclasses.replace(evidence, applied=[*evidence.applied, again], feed_event_ids=None))
    assert outcome.duplicated == 1
    assert not outcome.ok


def test_a_change_fed_twice_fails_the_run() -> None:
    evidence = history(CLEAN)
    feed = [*(evidence.feed_event_ids or []), "laptop-e2"]
    outcome = judged(dataclasses.replace(evidence, feed_event_ids=feed))
    assert outcome.duplicated == 1
    assert not outcome.ok


def test_a_seq_gap_fails_the_run_though_nothing_acknowledged_is_lost() -> None:
    # seq 3 was written, never acknowledged nor applied, and nothing says it was consumed: a hole.
    evidence = history({"phone": [1, 2, 4, 5], "laptop": [1, 2, 3]})
    outcome = judged(evidence)
    assert (outcome.lost, outcome.duplicated, outcome.diverged) == (0, 0, False)
    assert failed_checks(outcome) == ["no per-device seq gap or inversion"]
    assert not outcome.ok
    assert outcome.checker is not None
    assert outcome.checker["seq_gaps"] == 1


def test_a_seq_consumed_without_an_event_is_no_gap() -> None:
    evidence = dataclasses.replace(
        history({"phone": [1, 2, 4, 5], "laptop": [1, 2, 3]}), consumed_without_event={"phone": frozenset({3})}
    )
    assert judged(evidence).ok


def test_a_seq_inversion_in_a_partition_fails_the_run() -> None:
    evidence = history(CLEAN)
    swapped = {2: 3, 3: 2}  # seqs 2 and 3 of the phone reached its partition in the wrong order
    log = [
        dataclasses.replace(e, offset=swapped.get(e.offset, e.offset)) if e.device_id == "phone" else e
        for e in evidence.log or ()
    ]
    outcome = judged(dataclasses.replace(evidence, log=log))
    assert (outcome.lost, outcome.duplicated) == (0, 0)
    assert failed_checks(outcome) == ["no per-device seq gap or inversion"]
    assert outcome.checker is not None
    assert outcome.checker["seq_inversions"] >= 1


@pytest.mark.parametrize("side", ["device", "projection", "replay"])
def test_divergence_on_any_side_fails_the_run(side: str) -> None:
    evidence = history(CLEAN)
    other = {("acme", "task", 3): "d-other"}
    if side == "device":
        evidence = dataclasses.replace(
            evidence, device_digests=[*evidence.device_digests[:1], DeviceDigest("laptop", "acme", "task", 3, "x")]
        )
    elif side == "projection":
        evidence = dataclasses.replace(evidence, projection_digests=other)
    else:
        evidence = dataclasses.replace(evidence, replay_digests=other)
    outcome = judged(evidence)
    assert outcome.diverged
    assert not outcome.ok


def test_a_failed_scenario_check_fails_the_run() -> None:
    outcome = judged(history(CLEAN))
    assert outcome.check("the gateway answered 503", ok=False, detail="it answered 200") is False
    assert not outcome.ok
    assert Check("the gateway answered 503", ok=False, detail="it answered 200").as_json() == {
        "name": "the gateway answered 503",
        "ok": False,
        "detail": "it answered 200",
    }


def test_every_scenario_of_the_issue_is_registered_with_both_sizes() -> None:
    scenarios = every_scenario()
    assert [s.name for s in scenarios] == ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "drill"]
    for scenario in scenarios:
        assert scenario.title
        assert scenario.proves
        assert scenario.sizes[Size.QUICK]
        assert scenario.sizes[Size.FULL]
    assert scenario_named("r4").name == "R4"


def test_an_unknown_scenario_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown scenario 'R10'; known: R1, R2, .*drill"):
        scenario_named("R10")
