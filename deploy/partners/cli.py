"""`keel partners asyncapi`: the partner contract (AsyncAPI 3.0) generated from the schema catalog.

Exit codes: 0 written (or up to date with `--check`), 1 the file differs from what the catalog gives
(`--check`), 2 unusable input (a catalog that does not load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deploy.partners.asyncapi import build_asyncapi, render_asyncapi
from keel.errors import ConfigurationError
from keel.settings import Settings
from schemas.catalog import SCHEMAS_ROOT, Catalog

__all__ = ["app"]

app = typer.Typer(help="The partner contract: topics, keys, headers and schemas as AsyncAPI.", no_args_is_help=True)

# The committed document describes the default deployment, whatever KEEL_TOPIC_PREFIX this shell has.
_DEFAULT_PREFIX = str(Settings.model_fields["topic_prefix"].default)


@app.command()
def asyncapi(
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of standard output")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 if --out differs from the generated text")
    ] = False,
    prefix: Annotated[str, typer.Option("--prefix", help="Topic prefix of the deployment described")] = _DEFAULT_PREFIX,
    catalog_root: Annotated[
        Path, typer.Option("--catalog", help="Schemas folder (avro/ and subjects.toml)", show_default=False)
    ] = SCHEMAS_ROOT,
) -> None:
    """Generate the AsyncAPI 3.0 document of Keel's topics from schemas/ (docs/asyncapi.yaml is its output)."""
    try:
        text = render_asyncapi(build_asyncapi(Catalog.load(catalog_root), topic_prefix=prefix))
    except ConfigurationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    if check:
        if out is None:
            typer.echo("error: --check needs --out", err=True)
            raise typer.Exit(2)
        if not out.exists() or out.read_text() != text:
            typer.echo(f"{out} is out of date: run `keel partners asyncapi --out {out}`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is up to date")
        return
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text)
    typer.echo(f"wrote {out}", err=True)
