"""Every scenario of the resilience battery against the real stack: `quick` by default, `full` under `long`.

Each run goes through the runner (`run_scenario`, as `keel chaos run` does) and is judged on the verdict it
returns: nothing acknowledged lost, nothing applied twice, no divergence, and the invariants that are the
point of the scenario held. The whole quick battery takes about 8 minutes on a 2-core machine
(docs/resilience.md has each scenario's duration); the full twins are `make test-long` material.
"""

from __future__ import annotations

from typing import Any

import pytest

from deploy.chaos.runner import ChaosOptions, run_scenario
from deploy.chaos.scenario import Size
from tests.support.services import Services

pytestmark = pytest.mark.integration

SEED = 20_261_126  # fixed, so a failure here replays with `keel chaos run <scenario> --seed 20261126`

# Per scenario, the checks that are its point (each must be reported, and must have held).
SPECIFIC: dict[str, tuple[str, ...]] = {
    "R1": (
        "every kind of kill happened",
        "kills landed mid-stream",
        "no session left idle in transaction",
        "every op applied",
        "caught up after the kills",
    ),
    "R2": (
        "leadership moved off the faulty broker, and it came back in sync",
        "with 2 of 3 brokers down the gateway answered 503",
        "with 2 of 3 brokers down nothing was acknowledged",
        "every device drained",
    ),
    "R3": ("no partition with backlog idle for 60 s or more", "members joined and left", "every op applied"),
    "R4": (
        "every malformed record is in the DLQ",
        "each with the expected reason",
        "nothing else in the DLQ",
        "each stalls its partition under 1 s",
        "the outage sent nothing to the DLQ",
        "every valid op applied",
    ),
    "R5": (
        "the projector moved on after every fault within 30 s",
        "the projector process survived every fault (its pool recovered)",
        "no session left idle in transaction",
        "cancelled batches applied exactly once",
    ),
    "R6": (
        "every upload queue drained within 60 s of reconnecting",
        "device digests equal the server's",
        "every kind of trouble was played",
        "the network did hurt",
    ),
    "R7": (
        "every kind of kill happened",
        "retries deduplicated (acknowledged from the ledger, or copies dropped by the projector)",
        "every device drained",
    ),
    "R8": (
        "devices converged on the projection",
        "conflicts were decided",
        "every decision's winner has the greater (HLC, device) stamp",
    ),
    "R9": ("the invariants held after every step of every program", "every fault was exercised"),
    "drill": (
        "restored digests equal those before the disaster",
        "projection equals a clean replay of the log",
        "the replay re-applied exactly what the snapshot lacked",
    ),
}
ALWAYS = ("no per-device seq gap or inversion", "nothing acknowledged missing from the log")
WITHOUT_LOG_CHECKER = {"R9"}  # R9 judges the in-memory model after every step, not a log


async def run(services: Services, scenario: str, size: Size) -> dict[str, Any]:
    settings = services.settings(log_level="WARNING")
    return await run_scenario(ChaosOptions(scenario, size, SEED, services.toxiproxy_url), settings)


def assert_held(result: dict[str, Any], scenario: str) -> None:
    checks = {c["name"]: c for c in result["checks"]}
    failed = {name: c["detail"] for name, c in checks.items() if not c["ok"]}
    assert (result["lost"], result["duplicated"], result["diverged"], failed) == (0, 0, False, {}), result["checker"]
    expected = SPECIFIC[scenario] + (() if scenario in WITHOUT_LOG_CHECKER else ALWAYS)
    assert sorted(set(expected) - set(checks)) == []  # every check that is the point was reported
    assert result["ok"] is True
    assert result["events"] > 0
    assert result["scenario"] == scenario
    assert result["seed"] == SEED
    if scenario not in WITHOUT_LOG_CHECKER:
        assert result["checker"]["ok"] is True
        assert result["checker"]["applied"] > 0


@pytest.mark.timeout(420)
@pytest.mark.parametrize("scenario", list(SPECIFIC))
async def test_the_scenario_holds_at_quick_size(services: Services, scenario: str) -> None:
    result = await run(services, scenario, Size.QUICK)
    assert_held(result, scenario)
    assert result["size"] == "quick"


@pytest.mark.long
@pytest.mark.timeout(3 * 3600)
@pytest.mark.parametrize("scenario", list(SPECIFIC))
async def test_the_scenario_holds_at_full_size(services: Services, scenario: str) -> None:
    result = await run(services, scenario, Size.FULL)
    assert_held(result, scenario)
    assert result["size"] == "full"
