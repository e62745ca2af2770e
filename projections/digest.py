"""Canonical digests of entity state: the same rows give the same hash wherever they are computed.

A digest covers live (not deleted) entities only, each as `entity_id` plus its visible field values in a
given schema version, serialised as canonical JSON (sorted keys, no whitespace) and hashed in entity-id
order. The projector's tables, a rebuilt shadow copy, a snapshot and a device's local store all hash to
the same value when they hold the same state; a device on an older version compares against the server
rows down-cast to its version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["canonical_row", "digest_rows", "digests_by_tenant", "empty_digest"]


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"digest cannot canonicalise {type(value).__name__}")


def canonical_row(entity_id: str, values: Mapping[str, Any]) -> bytes:
    """The canonical bytes of one live entity."""
    return json.dumps(
        [entity_id, dict(values)], sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default
    ).encode()


def digest_rows(rows: Iterable[tuple[str, Mapping[str, Any]]]) -> str:
    """sha256 hex over live entities in entity-id order (`rows` may come in any order)."""
    hasher = hashlib.sha256()
    count = 0
    for entity_id, values in sorted(rows, key=lambda row: row[0]):
        hasher.update(canonical_row(entity_id, values))
        hasher.update(b"\n")
        count += 1
    hasher.update(f"count={count}".encode())
    return hasher.hexdigest()


def empty_digest() -> str:
    """Digest of a table with no live entity."""
    return digest_rows(())


def digests_by_tenant(rows: Iterable[tuple[str, str, Mapping[str, Any]]]) -> dict[str, tuple[int, str]]:
    """Tenant → (live entities, digest) from (tenant_id, entity_id, visible values) rows."""
    grouped: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for tenant_id, entity_id, values in rows:
        grouped.setdefault(tenant_id, []).append((entity_id, values))
    return {tenant: (len(items), digest_rows(items)) for tenant, items in sorted(grouped.items())}
