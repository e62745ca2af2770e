"""Running one scenario: names, seed, timing, clean-up, the JSON result and the figures page.

`run_scenario` gives the scenario a run of its own (`deploy/chaos/context.py`), times it, closes whatever
it left running, and returns the result as JSON-ready data:
`scenario`, `size`, `seed`, `events`, `lost`, `duplicated`, `diverged`, `duration_s`, `ok`, the named
`checks`, the scenario's `figures`, the checker's counts, and the machine and versions it ran on. The run's
topics and schema are dropped when everything held (kept for inspection otherwise, or with `keep`).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.bench.machine import describe_machine, describe_versions
from deploy.chaos.context import ChaosRun, run_names
from deploy.chaos.scenario import Size, scenario_named
from keel.logging import get_logger
from keel.settings import Settings

__all__ = ["ChaosOptions", "run_scenario"]

_log = get_logger("chaos")


@dataclass(frozen=True)
class ChaosOptions:
    """What `keel chaos run` was asked for."""

    scenario: str
    size: Size = Size.QUICK
    seed: int | None = None
    toxiproxy_url: str | None = None
    keep: bool = False  # keep the run's topics and schema even when everything held


async def run_scenario(options: ChaosOptions, settings: Settings) -> dict[str, Any]:
    """Run one scenario and return its result (see the module docstring)."""
    scenario = scenario_named(options.scenario)
    seed = options.seed if options.seed is not None else secrets.randbelow(1_000_000)
    run_id, named = run_names(settings, scenario.name)
    folder = settings.home / "chaos" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    toxiproxy = options.toxiproxy_url or f"http://127.0.0.1:{settings.toxiproxy_port}"
    run = ChaosRun(scenario.name, options.size, seed, run_id, named, folder, toxiproxy_url=toxiproxy)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = describe_machine()
    _log.info("chaos run starting", scenario=scenario.name, size=options.size.value, seed=seed, run=run_id)
    began = time.monotonic()
    ok = False
    try:
        outcome = await scenario.run(run)
        ok = outcome.ok
    finally:
        await run.close(drop_data=ok and not options.keep)
    duration = time.monotonic() - began
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "title": scenario.title,
        "proves": scenario.proves,
        "size": options.size.value,
        "seed": seed,
        "events": outcome.events,
        "lost": outcome.lost,
        "duplicated": outcome.duplicated,
        "diverged": outcome.diverged,
        "duration_s": round(duration, 1),
        "ok": outcome.ok,
        "checks": [c.as_json() for c in outcome.checks],
        "figures": outcome.figures,
        "checker": outcome.checker,
        "notes": run.notes,
        "run_id": run_id,
        "started_at": started_at,
        "names": {
            "topic_prefix": named.topic_prefix,
            "pg_schema": named.pg_schema,
            "consumer_group": named.consumer_group,
            "logs": str(folder),
            "data_kept": not ok or options.keep,
        },
        "machine": machine,
        "versions": await describe_versions(settings),
    }
    _log.info("chaos run done", scenario=scenario.name, ok=outcome.ok, duration_s=round(duration, 1))
    return result


def default_figures_path() -> Path:
    """docs/resilience.md of the working directory's clone."""
    return Path.cwd() / "docs" / "resilience.md"
