"""Code migration steps of the example domain (tasks): the semantic changes Avro resolution cannot do."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from keel.errors import ConfigurationError
from keel.settings import get_settings
from schemas.catalog import Catalog, default_catalog
from schemas.migrations import MigrationRegistry, StepResult

__all__ = [
    "build_registry",
    "configured_disabled_migrations",
    "default_registry",
    "format_due",
    "normalize_task",
    "parse_due",
    "upcast_task_v2_v3",
]

_ISO_DATE = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})\s*$")
_SLASH_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\s*$")
_MONTHS = {
    m: i
    for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)
}
_WORDY_DATE = re.compile(r"^\s*(?:(\d{1,2})\s+([a-z]{3})[a-z]*\.?|([a-z]{3})[a-z]*\.?\s+(\d{1,2}),?)\s+(\d{4})\s*$")


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def parse_due(text: str | None) -> int | None:  # noqa: PLR0911 - one early return per accepted format
    """Milliseconds (UTC) for an absolute free-text due date, None when it names no absolute date.

    Deterministic on purpose: relative phrases ("tomorrow") depend on when they were typed, which no
    replay can know, so they stay text only (and `simulate` reports them as not migrated).
    """
    if text is None or not text.strip():
        return None
    candidate = text.strip()
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        moment = None
    if moment is not None:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return _millis(moment)
    lowered = candidate.lower()
    try:
        if match := _ISO_DATE.match(lowered):
            return _millis(datetime(int(match[1]), int(match[2]), int(match[3]), tzinfo=UTC))
        if match := _SLASH_DATE.match(lowered):  # day/month/year, as most of the world writes it
            return _millis(datetime(int(match[3]), int(match[2]), int(match[1]), tzinfo=UTC))
        if match := _WORDY_DATE.match(lowered):
            day = match[1] or match[4]
            month = _MONTHS.get(match[2] or match[3] or "")
            if month is not None:
                return _millis(datetime(int(match[5]), month, int(day), tzinfo=UTC))
    except ValueError:
        return None
    return None


def format_due(millis: int | None) -> str | None:
    """The legacy free-text form of a due timestamp: ISO date, or ISO date-time when not at midnight UTC."""
    if millis is None:
        return None
    moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    if moment.hour == moment.minute == moment.second == 0 and moment.microsecond == 0:
        return moment.date().isoformat()
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def upcast_task_v2_v3(payload: dict[str, Any], changed: tuple[str, ...]) -> StepResult:
    """v2 → v3: parse the free-text `due` into the `due_at` timestamp whenever the writer set `due`."""
    if "due" not in changed:
        return StepResult(payload, changed)
    fixed = dict(payload)
    fixed["due_at"] = parse_due(payload.get("due"))
    cautions = []
    if payload.get("due") and fixed["due_at"] is None:
        cautions.append(f"due: {payload['due']!r} names no absolute date; due_at left empty")
    return StepResult(fixed, (*changed, "due_at") if "due_at" not in changed else changed, cautions)


def normalize_task(payload: dict[str, Any], changed: tuple[str, ...]) -> StepResult:
    """Keep the deprecated `due` in step with `due_at` so clients before v3 see what v3 clients see."""
    if "due_at" in changed and "due" not in changed:
        fixed = dict(payload)
        fixed["due"] = format_due(payload.get("due_at"))
        return StepResult(fixed, (*changed, "due"))
    if "due" in changed and "due_at" not in changed:
        fixed = dict(payload)
        fixed["due_at"] = parse_due(payload.get("due"))
        return StepResult(fixed, (*changed, "due_at"))
    return StepResult(payload, changed)


def configured_disabled_migrations(catalog: Catalog | None = None) -> tuple[str, ...]:
    """Step names disabled by `KEEL_DISABLED_MIGRATIONS` (settings) and `[migrations] disabled` (subjects.toml)."""
    path = (catalog or default_catalog()).root / "subjects.toml"
    try:
        config: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path}: invalid TOML: {error}") from error
    from_file = config.get("migrations", {}).get("disabled", [])
    if not isinstance(from_file, list) or not all(isinstance(name, str) for name in from_file):
        raise ConfigurationError(f"{path}: [migrations] disabled must be a list of step names")
    return tuple(dict.fromkeys([*get_settings().disabled_migrations, *from_file]))


def build_registry(catalog: Catalog | None = None, disabled: Iterable[str] | None = None) -> MigrationRegistry:
    """A migration registry with the example domain's steps, minus the disabled ones.

    `disabled=None` reads the configuration (settings and subjects.toml); an unknown step name is a
    ConfigurationError, so a typo in a rollback cannot pass unnoticed.
    """
    catalog = catalog or default_catalog()
    registry = MigrationRegistry(catalog)
    registry.register_upcaster("task", 2, upcast_task_v2_v3)
    registry.register_normalizer("task", normalize_task)
    for name in configured_disabled_migrations(catalog) if disabled is None else disabled:
        registry.disable(name)
    registry.log_configuration()
    return registry


@lru_cache(maxsize=1)
def default_registry() -> MigrationRegistry:
    """The shared registry, honouring the configured disabled steps."""
    return build_registry()
