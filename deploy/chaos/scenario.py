"""What a resilience scenario is: a name, its sizes, a run function, and the result every run reports.

Every scenario returns a `ScenarioOutcome`: the checker's verdict where it applies (`lost`, `duplicated`,
`diverged` — deploy/verification/checker.py), the scenario's own invariants as named `Check`s, and its
figures. The runner (`deploy/chaos/runner.py`) times the run and turns the outcome into the JSON of
`keel chaos run` (docs/resilience.md lists what each scenario measures).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploy.verification.checker import FindingKind
from keel.errors import ConfigurationError

if TYPE_CHECKING:
    from deploy.chaos.context import ChaosRun
    from deploy.verification.checker import CheckReport

__all__ = [
    "SCENARIOS",
    "Check",
    "Scenario",
    "ScenarioOutcome",
    "Size",
    "every_scenario",
    "register",
    "scenario_named",
]


class Size(enum.StrEnum):
    """How big a run is: `quick` fits `make test`; `full` is the soak of `make test-long`."""

    QUICK = "quick"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class Check:
    """One invariant of a scenario, whether it held, and what was seen."""

    name: str
    ok: bool
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class ScenarioOutcome:
    """What a scenario found (the runner adds the scenario, size, seed and duration)."""

    events: int
    lost: int = 0
    duplicated: int = 0
    diverged: bool = False
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    checker: dict[str, Any] | None = None  # CheckReport.as_json of the final verdict, where the checker ran

    @classmethod
    def judged(cls, report: CheckReport, events: int) -> ScenarioOutcome:
        """An outcome carrying the checker's verdict: lost, duplicated, diverged, and its other findings as checks.

        Seq gaps, seq inversions and acknowledged ops missing from the log are not in the three headline
        figures, so they become checks of their own: a run with any of them fails like a run that lost an op.
        """
        outcome = cls(
            events=events,
            lost=report.lost,
            duplicated=report.duplicated,
            diverged=report.diverged,
            checker=report.as_json(max_findings=50),
        )
        gaps, inversions = report.count(FindingKind.SEQ_GAP), report.count(FindingKind.SEQ_INVERSION)
        outcome.check(
            "no per-device seq gap or inversion", gaps + inversions == 0, f"{gaps} gaps, {inversions} inversions"
        )
        missing = report.count(FindingKind.MISSING_FROM_LOG)
        outcome.check("nothing acknowledged missing from the log", missing == 0, f"{missing} ops")
        return outcome

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record an invariant; returns whether it held."""
        self.checks.append(Check(name, ok, detail))
        return ok

    @property
    def ok(self) -> bool:
        """Nothing lost or duplicated, no divergence, every invariant held."""
        return self.lost == 0 and self.duplicated == 0 and not self.diverged and all(c.ok for c in self.checks)


ScenarioRun = Callable[["ChaosRun"], Awaitable[ScenarioOutcome]]


@dataclass(frozen=True)
class Scenario:
    """A registered scenario: its id, a title, what it proves, its sizes in words and its run function."""

    name: str
    title: str
    proves: str
    sizes: Mapping[Size, str]
    run: ScenarioRun
    needs: tuple[str, ...] = ()  # services beyond Kafka, registry and PostgreSQL: "toxiproxy", "kafka-cluster"


SCENARIOS: dict[str, Scenario] = {}


def register(
    name: str, title: str, proves: str, *, quick: str, full: str, needs: tuple[str, ...] = ()
) -> Callable[[ScenarioRun], ScenarioRun]:
    """Decorator: add a scenario's run function to `SCENARIOS` under `name`."""

    def add(run: ScenarioRun) -> ScenarioRun:
        if name in SCENARIOS:
            raise ConfigurationError(f"scenario {name} registered twice")
        SCENARIOS[name] = Scenario(name, title, proves, {Size.QUICK: quick, Size.FULL: full}, run, needs)
        return run

    return add


def _order(scenario: Scenario) -> tuple[int, str]:
    number = scenario.name[1:]
    return (int(number), "") if scenario.name.startswith("R") and number.isdigit() else (99, scenario.name)


def every_scenario() -> list[Scenario]:
    """Every registered scenario, R1 … R9 then the drill."""
    from deploy.chaos import scenarios  # noqa: F401 - importing registers every scenario

    return sorted(SCENARIOS.values(), key=_order)


def scenario_named(name: str) -> Scenario:
    """The scenario called `name` (case-insensitive); ConfigurationError naming the known ones otherwise."""
    known = every_scenario()
    for found in known:
        if found.name.lower() == name.lower():
            return found
    raise ConfigurationError(f"unknown scenario {name!r}; known: {', '.join(s.name for s in known)}")
