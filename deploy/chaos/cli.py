"""`keel chaos list` and `keel chaos run SCENARIO --size quick|full [--seed X] [--json PATH]` (docs/runbooks/)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from deploy.chaos.figures import update_figures
from deploy.chaos.runner import ChaosOptions, default_figures_path, run_scenario
from deploy.chaos.scenario import Size, every_scenario, scenario_named
from keel.errors import KeelError
from keel.settings import get_settings

__all__ = ["chaos_app"]

chaos_app = typer.Typer(
    help="The resilience battery: fault scenarios R1 to R9 and the restore drill, judged by the checker.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)


@chaos_app.command("list")
def list_command() -> None:
    """Every scenario: what it breaks, what it proves, and its sizes."""
    table = Table("scenario", "title", "proves", "quick", "full")
    for scenario in every_scenario():
        table.add_row(
            scenario.name, scenario.title, scenario.proves, scenario.sizes[Size.QUICK], scenario.sizes[Size.FULL]
        )
    console.print(table)


def _summary(result: dict[str, Any]) -> None:
    verdict = "[green]ok[/green]" if result["ok"] else "[red]FAILED[/red]"
    console.print(
        f"{result['scenario']} ({result['size']}, seed {result['seed']}): {verdict} in {result['duration_s']:.0f}s — "
        f"{result['events']:,} events, lost {result['lost']}, duplicated {result['duplicated']}, "
        f"diverged {result['diverged']}"
    )
    for check in result["checks"]:
        mark = "✓" if check["ok"] else "[red]✗[/red]"
        console.print(f"  {mark} {check['name']}: {check['detail']}")
    if not result["ok"]:
        console.print(f"  data kept for inspection: {result['names']}")


@chaos_app.command("run")
def run_command(
    scenario: Annotated[str, typer.Argument(help="R1 … R9, drill, or all")],
    *,
    size: Annotated[Size, typer.Option("--size", help="quick (make test) or full (make test-long)")] = Size.QUICK,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the run (default: random, printed)")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result (a list for `all`) here")] = None,
    figures: Annotated[
        Path | None, typer.Option("--figures", help="The figures page to update (default docs/resilience.md)")
    ] = None,
    no_figures: Annotated[bool, typer.Option("--no-figures", help="Do not update the figures page")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the run's topics and schema even when it passed")] = False,
    toxiproxy_url: Annotated[
        str | None, typer.Option("--toxiproxy-url", help="Toxiproxy API (default: the local stack's)")
    ] = None,
) -> None:
    """Run a scenario (or all) and judge it: exit 0 when every invariant held, 1 when not, 2 on set-up errors."""
    try:
        names = [s.name for s in every_scenario()] if scenario.lower() == "all" else [scenario_named(scenario).name]
    except KeelError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    page = None if no_figures else (figures or default_figures_path())
    settings = get_settings()
    results: list[dict[str, Any]] = []
    unusable: list[str] = []  # scenarios that could not be set up; `all` goes on with the next one
    try:
        for name in names:
            options = ChaosOptions(name, size, seed, toxiproxy_url, keep)
            try:
                result = asyncio.run(run_scenario(options, settings))
            except KeelError as error:
                console.print(f"[red]{name}: {type(error).__name__}:[/red] {error}")
                unusable.append(name)
                continue
            results.append(result)
            _summary(result)
            if page is not None:
                update_figures(page, result)
    finally:
        if json_path is not None and results:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            data: Any = results if scenario.lower() == "all" else results[0]
            json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if unusable:
        console.print(f"[red]not run (set-up errors): {', '.join(unusable)}[/red]")
        raise typer.Exit(2)
    raise typer.Exit(0 if all(r["ok"] for r in results) else 1)
