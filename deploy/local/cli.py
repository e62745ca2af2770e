"""`keel stack up | down | status | logs`: the local stack from one command."""

from __future__ import annotations

import json
import subprocess
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deploy.local.stack import Stack, StackStartError
from keel.errors import ConfigurationError
from keel.settings import get_settings

app = typer.Typer(help="Run Kafka, the schema registry, PostgreSQL and Toxiproxy on 127.0.0.1.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def up(
    brokers: Annotated[int, typer.Option(help="1, or 3 for fault tests (RF 3, min ISR 2)")] = 1,
    with_toxiproxy: Annotated[bool, typer.Option("--with-toxiproxy", help="also run Toxiproxy")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each service")] = 180.0,
) -> None:
    """Download what is missing, start what is not running, wait until everything is ready."""
    stack = Stack(get_settings())
    try:
        with console.status("starting the local stack…") as status:

            def progress(message: str) -> None:
                console.log(message)
                status.update(message + " …")

            stack.up(brokers=brokers, with_toxiproxy=with_toxiproxy, progress=progress, timeout_s=timeout)
    except StackStartError as error:
        console.print(f"[red]✗ {error}")
        raise typer.Exit(1) from error
    except ConfigurationError as error:
        console.print(f"[red]✗ {error}")
        raise typer.Exit(1) from error
    _print_table(stack)


@app.command()
def down(
    purge: Annotated[bool, typer.Option("--purge", help="also delete runtime data (logs, databases)")] = False,
) -> None:
    """Stop the processes this stack started (by pid file), never anything else."""
    stack = Stack(get_settings())
    stopped = stack.down()
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    if purge:
        for folder in stack.purge():
            console.print(f"removed {folder}")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Health, endpoint, pid and log of every service; exit 1 if any is unhealthy."""
    stack = Stack(get_settings())
    statuses = stack.status()
    if as_json:
        typer.echo(json.dumps({name: s.as_dict() for name, s in statuses.items()}, indent=2))
    else:
        _print_table(stack)
    if not all(s.healthy for s in statuses.values()):
        raise typer.Exit(1)


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="kafka, kafka-2, kafka-3, registry, postgres, toxiproxy, downloads")],
    lines: Annotated[int, typer.Option("-n", help="lines from the end")] = 50,
    follow: Annotated[bool, typer.Option("-f", help="follow the log")] = False,
) -> None:
    """Print the tail of a service's log."""
    try:
        path = Stack(get_settings()).log_path(service)
    except ConfigurationError as error:
        console.print(f"[red]✗ {error}")
        raise typer.Exit(2) from error
    if not path.exists():
        console.print(f"[yellow]no log yet at {path}")
        raise typer.Exit(1)
    subprocess.run(["tail", "-n", str(lines), *(["-f"] if follow else []), str(path)], check=False)


def _print_table(stack: Stack) -> None:
    table = Table(title="keel local stack")
    for column in ("service", "healthy", "endpoint", "pid", "log"):
        table.add_column(column)
    for name, s in stack.status().items():
        table.add_row(name, "[green]yes" if s.healthy else "[red]no", s.endpoint, str(s.pid or "-"), s.log)
    console.print(table)
