"""The `keel` command line: the composition root that wires every package's commands together."""

from __future__ import annotations

import typer

from deploy.local.cli import app as stack_app
from keel.logging import configure_logging
from keel.settings import get_settings

app = typer.Typer(help="Keel: an event-sourced sync backbone for offline-first apps.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


@app.callback()
def _setup() -> None:
    """Configure logging once for every command."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)


def main() -> None:
    """Console-script entry point."""
    app()
