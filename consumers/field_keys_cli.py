"""`keel field-keys …`: the keyring of sensitive payload fields (add or rotate keys, status, reencrypt).

See docs/security.md, "Rotating field-encryption keys": which key seals what, and re-sealing with the active key.

Registered by the composition root (deploy/cli.py). The keyring file is KEEL_FIELD_KEYS_FILE (or --file);
every gateway and projector must read the same file. Exit codes: 0 done, 2 unusable input or configuration.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from keel.errors import ConfigurationError, KeelError
from keel.settings import get_settings
from projections.field_encryption import FieldCipher, FieldKeyring
from projections.field_keys_pg_adapter import PgFieldKeys
from projections.pg_adapter import connect_pool

__all__ = ["field_keys_app"]

console = Console()
field_keys_app = typer.Typer(
    help="Keys of sensitive payload fields: add (rotate), status, reencrypt.", no_args_is_help=True
)
KeyringFile = Annotated[Path | None, typer.Option("--file", help="Keyring file (default KEEL_FIELD_KEYS_FILE)")]


def _path(given: Path | None) -> Path:
    path = given or get_settings().field_keys_file
    if path is None:
        console.print("[red]no keyring file: set KEEL_FIELD_KEYS_FILE or pass --file[/red]")
        raise typer.Exit(2)
    return path


@field_keys_app.command("add")
def add_command(file: KeyringFile = None) -> None:
    """Add a new key and make it the active one (creates the keyring if needed); old keys keep decrypting."""
    path = _path(file)
    try:
        keyring = FieldKeyring.from_file(path) if path.exists() else None
        key_id = f"k{secrets.token_hex(4)}"
        keys = {**(keyring.keys if keyring else {}), key_id: FieldKeyring.new_key()}
        FieldKeyring.write(path, keys, key_id)
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error
    console.print(f"{path}: {key_id} is now active ({len(keys)} keys); restart gateways and projectors to use it")


def _cipher(path: Path) -> FieldCipher:
    if not path.exists():
        raise ConfigurationError(f"{path} does not exist (`keel field-keys add` creates it)")
    return FieldCipher.for_catalog(FieldKeyring.from_file(path))


@field_keys_app.command("status")
def status_command(file: KeyringFile = None) -> None:
    """How many sensitive values each key seals, per entity table ('plain' = not encrypted)."""
    path = _path(file)

    async def work() -> dict[str, dict[str, int]]:
        settings = get_settings()
        pool = await connect_pool(settings.database_url, max_size=1)
        try:
            usage = await PgFieldKeys(pool, settings.pg_schema, _cipher(path)).usage()
        finally:
            await pool.close()
        return {table: dict(counts) for table, counts in usage.items()}

    try:
        usage = asyncio.run(work())
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error
    table = Table("entity table", "key", "values")
    for name, counts in usage.items():
        for key_id, count in sorted(counts.items()):
            table.add_row(name, key_id, str(count))
    console.print(table)


@field_keys_app.command("reencrypt")
def reencrypt_command(file: KeyringFile = None) -> None:
    """Re-seal every sensitive value with the active key (then older keys may leave the keyring)."""
    path = _path(file)

    async def work() -> int:
        settings = get_settings()
        pool = await connect_pool(settings.database_url, max_size=1)
        try:
            return await PgFieldKeys(pool, settings.pg_schema, _cipher(path)).reencrypt()
        finally:
            await pool.close()

    try:
        changed = asyncio.run(work())
    except KeelError as error:
        console.print(f"[red]{type(error).__name__}:[/red] {error}")
        raise typer.Exit(2) from error
    console.print(f"re-sealed {changed} rows with the active key")
