"""Runs the stages of `keel bench` in order, prints each figure as it lands, and writes the report.

A stage that fails (a service down, a timeout) is reported with its error and the run goes on with the next
one, so one broken stage does not cost the others' figures; the exit code says whether every stage ran.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from deploy.bench.config import STAGES, BenchConfig
from deploy.bench.context import BenchContext
from deploy.bench.figures import Figure
from deploy.bench.machine import describe_machine, describe_versions
from deploy.bench.report import BenchReport, write_document
from deploy.bench.stage_catch_up import run_catch_up
from deploy.bench.stage_codec import run_codec
from deploy.bench.stage_end_to_end import run_end_to_end
from deploy.bench.stage_fan_out import run_fan_out
from deploy.bench.stage_memory import run_memory
from deploy.bench.stage_produce import run_produce
from deploy.bench.stage_project import run_project
from keel.errors import KeelError
from keel.logging import get_logger
from keel.settings import Settings
from keel.telemetry import configure_telemetry

__all__ = ["RUNNERS", "run_bench"]

_log = get_logger("bench")
Runner = Callable[[BenchConfig, BenchContext], Awaitable[list[Figure]]]
RUNNERS: dict[str, Runner] = {
    "codec": run_codec,
    "produce": run_produce,
    "project": run_project,
    "end_to_end": run_end_to_end,
    "catch_up": run_catch_up,
    "fan_out": run_fan_out,
    "memory": run_memory,
}
assert tuple(RUNNERS) == STAGES


def _row(figure: Figure) -> list[str]:
    ratio = f"{figure.ratio:.2f}" if math.isfinite(figure.ratio) else "—"
    met = "—" if figure.met is None else ("yes" if figure.met else "no")
    return [
        figure.key,
        f"{figure.ours_median:,.1f} {figure.unit}",
        f"{figure.baseline_median:,.1f} {figure.unit}",
        ratio,
        figure.target.describe(figure.unit) if figure.target else "—",
        met,
    ]


async def run_bench(
    config: BenchConfig,
    settings: Settings,
    console: Console,
    *,
    stages: Sequence[str] = STAGES,
    json_path: Path | None = None,
    document: Path | None = None,
) -> BenchReport:
    """Run `stages` against the stack `settings` points at; write the JSON and the document when asked."""
    # Like the services: spans are created (and propagated) without an exporter; the first call in a process wins.
    configure_telemetry("keel-bench", settings.otel_exporter, settings.otel_endpoint, sample_ratio=1.0)
    context = BenchContext(settings)
    report = BenchReport(
        tag=context.tag,
        started_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        config=config,
        machine=describe_machine(),
        versions=await describe_versions(settings),
    )
    console.print(
        f"keel bench [bold]{config.size.value}[/bold], {config.repetitions} repetition(s), run {context.tag}; "
        f"{report.machine['cores']} cores, load {report.machine['load_average_1_5_15']}"
    )
    async with context.cleaned():
        for stage in stages:
            began = time.monotonic()
            console.print(f"[bold]{stage}[/bold] …")
            try:
                figures = await RUNNERS[stage](config, context)
            except (KeelError, OSError, TimeoutError, RuntimeError, httpx.HTTPError) as error:
                report.errors[stage] = f"{type(error).__name__}: {error}"
                console.print(f"[red]{stage} failed:[/red] {report.errors[stage]}")
                _log.warning("bench stage failed", stage=stage, error=report.errors[stage])
                figures = []
            report.stage_seconds[stage] = time.monotonic() - began
            report.figures.extend(figures)
            for figure in figures:
                console.print("  " + " | ".join(_row(figure)))
    report.profiles = dict(context.profiles)
    report.tallies = dict(context.tallies)
    for what, counts in report.lost.items():
        report.errors[f"tally {what}"] = f"sent {counts['sent']:,}, landed {counts['landed']:,}"
        console.print(f"[red]{what}: sent {counts['sent']:,}, landed {counts['landed']:,}[/red]")
    table = Table("figure", "ours", "baseline", "ratio", "target", "met", title="keel bench (medians)")
    for figure in report.figures:
        table.add_row(*_row(figure))
    console.print(table)
    if json_path is not None:
        report.write_json(json_path)
        console.print(f"JSON: {json_path}")
    if document is not None:
        write_document(report, document)
        console.print(f"document: {document}")
    return report
