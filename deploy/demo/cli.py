"""The `keel demo` command (registered by deploy/cli.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy.demo.plan import Chaos
from deploy.demo.runner import DemoOptions, run_demo
from keel.errors import KeelError
from keel.settings import get_settings

__all__ = ["demo_command"]


def demo_command(
    *,
    devices: Annotated[int, typer.Option("--devices", min=2, help="Simulated devices")] = 50,
    tenants: Annotated[int, typer.Option("--tenants", min=1, help="Tenants the devices are spread over")] = 5,
    duration: Annotated[
        float, typer.Option("--duration", min=20, help="Seconds of activity before the final phase")
    ] = 90.0,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the plan (default: random, printed)")] = None,
    chaos: Annotated[Chaos, typer.Option("--chaos", help="Incidents during the run")] = Chaos.STANDARD,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the JSON report here, and an HTML report beside it")
    ] = None,
    rate: Annotated[float, typer.Option("--rate", min=0.01, max=10, help="Writes per device and second (mean)")] = 0.2,
    toxiproxy_url: Annotated[
        str | None, typer.Option("--toxiproxy-url", help="Toxiproxy API (default: the local stack's)")
    ] = None,
) -> None:
    """A fleet of offline-first devices through outages and a live schema migration, then proof of convergence.

    Exit code 0 when every device converged with the projection and nothing acknowledged was lost or applied
    twice, 1 when not, 2 when the run could not be set up (docs/demo.md).
    """
    console = Console(soft_wrap=True)
    options = DemoOptions(
        devices=devices,
        tenants=tenants,
        duration_s=duration,
        seed=seed,
        chaos=chaos,
        report=report,
        writes_per_device_s=rate,
        toxiproxy_url=toxiproxy_url,
    )
    try:
        result = asyncio.run(run_demo(options, get_settings(), console))
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error
    if result.html is not None and report is not None:
        console.print(f"report: {report} and {result.html}")
    raise typer.Exit(result.exit_code)
