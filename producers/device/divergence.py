"""Silent divergence: compare this device's digests with the server's, fetch and repair the rows that differ.

The server answers with its rows down-cast to the device's version (`GET /v1/digest`); for a type that
differs the device asks for per-row hashes, then for the merged states of the differing rows with their
field stamps (`GET /v1/entities`), and `Replica.repair` replaces them, merging its own logged ops back on top.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

from producers.device.gateway_client import GatewayClient
from producers.device.replica import RepairSnapshot, Replica
from producers.wire import EntitySnapshot
from projections.conflict_rules import FieldState, WriteStamp

__all__ = ["Authorized", "DivergenceRepair", "snapshot_to_repair"]

T = TypeVar("T")
IDS_PER_REQUEST = 200


class Authorized(Protocol):
    """Runs a gateway call with a valid bearer token (the sync loop's session handling)."""

    async def __call__(self, call: Callable[[str], Awaitable[T]]) -> T:
        """The call's result."""
        ...


def snapshot_to_repair(snapshot: EntitySnapshot) -> RepairSnapshot:
    """The replica's form of a server snapshot."""
    return RepairSnapshot(
        snapshot.entity_type,
        snapshot.entity_id,
        {name: FieldState(f.value, WriteStamp.from_list(f.stamp)) for name, f in snapshot.fields.items()},
        WriteStamp.from_list(snapshot.deleted) if snapshot.deleted is not None else None,
    )


class DivergenceRepair:
    """Digest comparison and row repair for one replica."""

    def __init__(self, replica: Replica, client: GatewayClient, authorized: Authorized) -> None:
        self._replica = replica
        self._client = client
        self._authorized = authorized

    async def compare(self) -> dict[str, bool]:
        """Entity type → whether this device's digest equals the server's (types in another version are skipped)."""
        server = await self._authorized(self._client.digest)
        result: dict[str, bool] = {}
        for entity_type in self._replica.supported_versions:
            remote = server.entities.get(entity_type)
            if remote is None or remote.version != self._replica.local_version(entity_type):
                continue
            result[entity_type] = remote.digest == self._replica.digest(entity_type)
        return result

    async def repair(self, entity_types: Iterable[str]) -> int:
        """Replace every row of these types whose hash differs from the server's; how many were repaired."""
        types = [t for t in entity_types if t in self._replica.supported_versions]
        if not types:
            return 0
        detail = await self._authorized(functools.partial(self._client.digest, detail=types))
        repaired = 0
        for entity_type in types:
            server = detail.entities.get(entity_type)
            if server is None or server.version != self._replica.local_version(entity_type):
                continue
            local = self._replica.row_hashes(entity_type)
            remote = server.row_hashes or {}
            differing = sorted(k for k in local.keys() | remote.keys() if local.get(k) != remote.get(k))
            for start in range(0, len(differing), IDS_PER_REQUEST):
                chunk = differing[start : start + IDS_PER_REQUEST]
                found = await self._authorized(
                    functools.partial(self._client.entities, entity_type=entity_type, ids=chunk)
                )
                snapshots = [snapshot_to_repair(s) for s in found.snapshots]
                snapshots += [RepairSnapshot(entity_type, entity_id, None) for entity_id in found.missing]
                repaired += self._replica.repair(snapshots)
        return repaired
