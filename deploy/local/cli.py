"""`keel stack up | down | status | logs`: the local stack from one command.

Secure mode (`up --secure`, docs/security.md) adds `credentials`, `acls`, `roles`, `rotate-password` and
`rotate-certificate`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Annotated, Any

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
    secure: Annotated[
        bool,
        typer.Option("--secure", help="TLS + SASL/SCRAM + ACLs on Kafka, passwords and service roles in PostgreSQL"),
    ] = False,
) -> None:
    """Download what is missing, start what is not running, wait until everything is ready."""
    stack = Stack(get_settings())
    try:
        with console.status("starting the local stack…") as status:

            def progress(message: str) -> None:
                console.log(message)
                status.update(message + " …")

            stack.up(
                brokers=brokers, with_toxiproxy=with_toxiproxy, secure=secure, progress=progress, timeout_s=timeout
            )
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


# ---------------------------------------------------------------------------------------------- secure mode
def _secure_stack() -> Stack:
    stack = Stack(get_settings())
    if not stack.is_secure():
        console.print("[red]✗ the stack does not run in secure mode; `keel stack up --secure` first")
        raise typer.Exit(1)
    return stack


def _credentials(stack: Stack) -> dict[str, Any]:
    security = stack.security()
    kafka = stack.kafka()
    return {
        "kafka": {
            "bootstrap": kafka.bootstrap,
            "proxied_bootstrap": kafka.proxied_bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "ca_file": str(security.tls.ca_cert.resolve()),
            "principals": {
                role: {"username": name, "password": security.password(name)}
                for role, name in security.principals.by_role().items()
            },
        },
        "postgres": {"owner_dsn": stack.postgres().dsn, "roles": stack.role_dsns()},
    }


@app.command()
def credentials(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    env: Annotated[
        str | None,
        typer.Option(help="print `export KEEL_…` lines for one role: gateway, projector, operator, partner, admin"),
    ] = None,
) -> None:
    """Passwords of the secure stack's Kafka principals and PostgreSQL roles (they are secrets: handle with care)."""
    stack = _secure_stack()
    if env is not None:
        try:
            values = stack.security().service_env(env, stack.kafka().bootstrap)
        except ConfigurationError as error:
            console.print(f"[red]✗ {error}")
            raise typer.Exit(2) from error
        dsns = stack.role_dsns()
        if env in dsns:
            values["KEEL_DATABASE_URL"] = dsns[env]
        for key, value in values.items():
            typer.echo(f"export {key}={shlex.quote(value)}")
        return
    record = _credentials(stack)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    kafka = record["kafka"]
    table = Table(title=f"Kafka {kafka['bootstrap']} (SASL_SSL, SCRAM-SHA-512, CA {kafka['ca_file']})")
    for column in ("role", "username", "password"):
        table.add_column(column)
    for role, entry in kafka["principals"].items():
        table.add_row(role, entry["username"], entry["password"])
    console.print(table)
    roles = Table(title="PostgreSQL service roles")
    roles.add_column("role")
    roles.add_column("dsn")
    for kind, dsn in record["postgres"]["roles"].items():
        roles.add_row(kind, dsn)
    console.print(roles)


@app.command()
def acls(
    prefix: Annotated[str | None, typer.Option(help="topic prefix (default: KEEL_TOPIC_PREFIX)")] = None,
    group: Annotated[str | None, typer.Option(help="projector consumer group (default: KEEL_CONSUMER_GROUP)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Create the principals, topics and ACLs of a topic prefix (idempotent; removes stale topic grants)."""
    stack = _secure_stack()
    report = stack.provision_acls(prefix=prefix, consumer_group=group)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    console.print(
        f"prefix {report.prefix}: users created {report.users_created or 'none'}, topics created "
        f"{report.topics_created or 'none'}, ACLs +{report.acls_created} -{report.acls_deleted}"
    )


@app.command()
def roles(
    schema: Annotated[str | None, typer.Option(help="PostgreSQL schema (default: KEEL_PG_SCHEMA)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Migrate a schema and grant the service roles (keel_gateway, keel_projector, keel_readonly) their privileges."""
    stack = _secure_stack()
    report = stack.provision_roles(schema)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for role, tables in report.privileges.items():
            console.print(f"{role}: " + ", ".join(f"{t} ({' '.join(p)})" for t, p in tables.items()))
    if report.unclassified:
        console.print(f"[yellow]tables no role may use (add them to the policy): {', '.join(report.unclassified)}")


@app.command("rotate-password")
def rotate_password(
    principal: Annotated[
        str, typer.Argument(help="Kafka principal (keel-gateway, …, admin) or PostgreSQL role (keel_gateway, …)")
    ],
) -> None:
    """New password for a Kafka principal (admin: configs rewritten, brokers restarted) or a PostgreSQL role."""
    stack = _secure_stack()
    try:
        stack.rotate_password(principal)
    except (ConfigurationError, StackStartError) as error:
        console.print(f"[red]✗ {error}")
        raise typer.Exit(1) from error
    console.print(f"{principal}: new password stored; restart the services that log in as {principal}")


@app.command("rotate-certificate")
def rotate_certificate(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Issue a new broker certificate from the stack's CA and load it into the running brokers."""
    stack = _secure_stack()
    info = stack.rotate_certificate()
    if as_json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
    else:
        console.print(
            f"broker certificate {info.serial:x}, valid until {info.not_after.isoformat()}, sha256 {info.sha256}"
        )
