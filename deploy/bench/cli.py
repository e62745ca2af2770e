"""The `keel bench` command (registered by deploy/cli.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy.bench.config import STAGES, BenchConfig, Size
from deploy.bench.runner import run_bench
from keel.errors import KeelError
from keel.settings import get_settings

__all__ = ["bench_command"]


def bench_command(
    *,
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller stages: a few minutes instead of ~half an hour")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every figure as JSON here")] = None,
    doc: Annotated[
        Path | None,
        typer.Option("--doc", help="Rewrite the generated section of this document (default docs/performance.md)"),
    ] = Path("docs/performance.md"),
    no_doc: Annotated[bool, typer.Option("--no-doc", help="Leave the document alone")] = False,
    stage: Annotated[
        list[str] | None, typer.Option("--stage", help=f"Only these stages (repeatable): {', '.join(STAGES)}")
    ] = None,
    repetitions: Annotated[
        int | None, typer.Option("--repetitions", min=1, help="Repetitions per stage (default 3)")
    ] = None,
    profile: Annotated[
        bool, typer.Option("--profile", help="Profile one extra repetition of the in-process stages (pyinstrument)")
    ] = False,
    tiny: Annotated[bool, typer.Option("--tiny", hidden=True, help="Smoke size for tests")] = False,
) -> None:
    """Measure every stage against the raw limits of this machine, in the same run (docs/performance.md).

    Needs the stack (`keel stack up` or KEEL_* endpoints). Exit code 0 when every stage ran, 1 when a stage
    failed, 2 when the run could not start.
    """
    console = Console(soft_wrap=True)
    chosen = stage or list(STAGES)
    unknown = [name for name in chosen if name not in STAGES]
    if unknown:
        console.print(f"[red]unknown stage(s):[/red] {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        raise typer.Exit(2)
    size = Size.TINY if tiny else Size.QUICK if quick else Size.FULL
    config = BenchConfig.of(size, repetitions=repetitions, profile=profile)
    try:
        report = asyncio.run(
            run_bench(
                config,
                get_settings(),
                console,
                stages=chosen,
                json_path=json_path,
                document=None if no_doc else doc,
            )
        )
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error
    raise typer.Exit(1 if report.errors else 0)
