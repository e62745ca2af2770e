"""The `keel` command line: the composition root that wires every package's commands together."""

from __future__ import annotations

import typer

from consumers.audit_cli import audit_app
from consumers.cli import conflicts_app, projections_app, run_projector
from consumers.field_keys_cli import field_keys_app
from deploy.bench.cli import bench_command
from deploy.chaos.cli import chaos_app
from deploy.demo.cli import demo_command
from deploy.local.cli import app as stack_app
from deploy.observability.cli import dashboard_command, doctor_command
from deploy.partners.cli import app as partners_app
from keel.logging import configure_logging
from keel.settings import get_settings
from producers.gateway.rollout_cli import rollout_app
from producers.gateway.tokens_cli import tokens_app
from schemas.cli import app as schemas_app

app = typer.Typer(help="Keel: an event-sourced sync backbone for offline-first apps.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(schemas_app, name="schemas")
app.add_typer(partners_app, name="partners")
app.add_typer(projections_app, name="projections")
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(tokens_app, name="tokens")
app.add_typer(rollout_app, name="rollout")
app.add_typer(audit_app, name="audit")
app.add_typer(field_keys_app, name="field-keys")
app.add_typer(chaos_app, name="chaos")

run_app = typer.Typer(help="Run one of Keel's services in the foreground.", no_args_is_help=True)
app.add_typer(run_app, name="run")


@run_app.command("gateway")
def run_gateway_command(
    host: str | None = typer.Option(None, help="Interface to listen on (default: KEEL_GATEWAY_HOST)"),
    port: int | None = typer.Option(None, help="Port to listen on (default: KEEL_GATEWAY_PORT)"),
) -> None:
    """The device gateway: enroll, handshake, push, pull, live stream (docs/gateway-api.md)."""
    from producers.gateway.service import run_gateway

    settings = get_settings()
    overrides = {key: value for key, value in (("gateway_host", host), ("gateway_port", port)) if value is not None}
    run_gateway(settings.model_copy(update=overrides))


@run_app.command("projector")
def run_projector_command() -> None:
    """The projector: change topics → PostgreSQL, exactly once; health on KEEL_PROJECTOR_HEALTH_PORT."""
    run_projector()


@run_app.command("state-relay")
def run_state_relay_command() -> None:
    """The state relay: outbox → compacted <prefix>.<entity>.state topics; health on KEEL_STATE_RELAY_HEALTH_PORT."""
    from consumers.state_relay_service import run_state_relay

    run_state_relay(get_settings())


app.command("demo")(demo_command)
app.command("bench")(bench_command)
app.command("doctor")(doctor_command)
run_app.command("dashboard")(dashboard_command)


@app.callback()
def _setup() -> None:
    """Configure logging once for every command."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)


def main() -> None:
    """Console-script entry point."""
    app()
