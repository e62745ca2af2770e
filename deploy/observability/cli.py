"""Commands of the observability side: `keel doctor` and `keel run dashboard` (registered by deploy/cli.py)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deploy.observability.doctor import DoctorReport, Severity, run_doctor
from keel.settings import get_settings

__all__ = ["dashboard_command", "doctor_command"]

console = Console()
_STYLE = {
    Severity.OK: "[green]ok[/green]",
    Severity.WARN: "[yellow]warn[/yellow]",
    Severity.PROBLEM: "[red]PROBLEM[/red]",
}


def _print(report: DoctorReport) -> None:
    table = Table("", "check", "finding", "what to do", show_lines=False)
    for finding in report.findings:
        table.add_row(_STYLE[finding.severity], finding.check, finding.summary, finding.advice)
    console.print(table)
    problems = len(report.problems)
    warnings = sum(1 for f in report.findings if f.severity is Severity.WARN)
    verdict = "[green]healthy[/green]" if not problems else f"[red]{problems} problem(s)[/red]"
    console.print(f"{verdict}, {warnings} warning(s)")


def doctor_command(
    gateway_url: Annotated[
        str | None, typer.Option(help="Gateway base URL to check (default KEEL_GATEWAY_URL)")
    ] = None,
    projector_url: Annotated[
        str | None, typer.Option(help="Projector health base URL (default KEEL_PROJECTOR_URL)")
    ] = None,
    sample_s: Annotated[float | None, typer.Option(help="Seconds between two lag readings")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Check connectivity, versions, registry levels, consumer lag and the DLQ; say what to do; exit 1 on problems."""
    settings = get_settings()
    overrides = {k: v for k, v in (("gateway_url", gateway_url), ("projector_url", projector_url)) if v is not None}
    report = asyncio.run(run_doctor(settings.model_copy(update=overrides), sample_s=sample_s))
    if as_json:
        typer.echo(json.dumps({"findings": [asdict(f) for f in report.findings], "problems": len(report.problems)}))
    else:
        _print(report)
    raise typer.Exit(report.exit_code)


def dashboard_command(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default KEEL_DASHBOARD_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default KEEL_DASHBOARD_PORT)")] = None,
) -> None:
    """The live dashboard: lag, throughput, retries, DLQ, conflict hotspots, schema versions (docs/observability.md)."""
    from deploy.observability.dashboard import serve_dashboard

    settings = get_settings()
    overrides = {k: v for k, v in (("dashboard_host", host), ("dashboard_port", port)) if v is not None}
    serve_dashboard(settings.model_copy(update=overrides))
