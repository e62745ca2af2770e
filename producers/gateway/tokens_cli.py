"""`keel tokens …`: list, rotate, revoke and prune the keys that sign device tokens (docs/security.md).

Registered by the composition root (deploy/cli.py). Commands talk to the key store every gateway reads
(`{schema}.token_signing_keys` in KEEL_DATABASE_URL); gateways pick a change up within
KEEL_GATEWAY_TOKEN_KEYS_REFRESH_S, and at once when a token names a key they have not seen yet.
Exit codes: 0 done, 1 nothing matched (revoke of an unknown kid), 2 unusable input or configuration.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from keel.errors import KeelError
from keel.settings import Settings, get_settings
from producers.gateway.signing_keys import SigningKeyStore, describe, new_signing_key
from producers.gateway.signing_keys_pg_adapter import PgSigningKeyStore
from projections.pg_adapter import connect_pool

__all__ = ["tokens_app"]

T = TypeVar("T")
console = Console()
tokens_app = typer.Typer(help="Device-token signing keys: list, rotate, revoke, prune.", no_args_is_help=True)


def _run(work: Callable[[SigningKeyStore], Awaitable[T]]) -> T:
    settings: Settings = get_settings()

    async def main() -> T:
        pool = await connect_pool(settings.database_url, max_size=1)
        try:
            return await work(PgSigningKeyStore(pool, settings.pg_schema))
        finally:
            await pool.close()

    try:
        return asyncio.run(main())
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error


def _now_ms() -> int:
    return int(time.time() * 1000)


def _when(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


@tokens_app.command("list")
def list_command(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """Every signing key with its life (no secrets are printed)."""
    keys = [describe(key) for key in _run(lambda store: store.keys())]
    if as_json:
        typer.echo(json.dumps(keys, indent=2))
        return
    table = Table("kid", "created (UTC)", "active from", "retired", "revoked")
    for key in keys:
        table.add_row(
            key["kid"],
            _when(key["created_at_ms"]),
            _when(key["activates_at_ms"]),
            _when(key["retired_at_ms"]),
            _when(key["revoked_at_ms"]),
        )
    console.print(table)


@tokens_app.command("rotate")
def rotate_command(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """Create a new signing key and retire the others (they keep verifying until their tokens expire)."""
    now = _now_ms()
    key = new_signing_key(now)

    async def work(store: SigningKeyStore) -> None:
        await store.rotate_to(key, now)

    _run(work)
    if as_json:
        typer.echo(json.dumps(describe(key)))
    else:
        console.print(f"signing with {key.kid}; older keys verify until their tokens expire")


@tokens_app.command("revoke")
def revoke_command(kid: Annotated[str, typer.Argument(help="Key id to revoke (a compromised key)")]) -> None:
    """Stop accepting every token a key signed, now (devices handshake again); rotate first if it signs."""

    async def work(store: SigningKeyStore) -> bool:
        return await store.revoke(kid, _now_ms())

    if not _run(work):
        console.print(f"[red]no signing key {kid}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {kid}")


@tokens_app.command("prune")
def prune_command(
    older_than_s: Annotated[float, typer.Option(help="Delete keys retired or revoked longer ago than this")] = 86_400,
) -> None:
    """Delete keys that were retired or revoked long ago (they verify nothing any more)."""

    async def work(store: SigningKeyStore) -> list[str]:
        return await store.prune(_now_ms() - int(older_than_s * 1000))

    gone = _run(work)
    console.print(f"deleted {len(gone)} keys{': ' + ', '.join(gone) if gone else ''}")
