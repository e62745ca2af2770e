"""Change events to Confluent-framed Avro for the log: the one encoding path shared by every producer.

The writer schema of `(entity, version)` is the catalog's composed event schema; its registry id under the
topic's subject (TopicNameStrategy) is looked up once — or registered when `auto_register` is on (tests,
local demos; production registers through `keel schemas register`) — and cached for the encoder's life.
Driver-free: the registry is the `SchemaRegistry` port, the output is bytes for any `LogWriter`.
"""

from __future__ import annotations

from collections.abc import Callable

from keel.errors import ConfigurationError, ValidationError
from keel.event_log import OutgoingRecord
from schemas.catalog import Catalog, default_catalog, subject_for
from schemas.codec import encode_body, frame, union_branches, with_branches
from schemas.envelope import ChangeEvent, TraceHeaders
from schemas.registry import SchemaRegistry

__all__ = ["EventEncoder"]


class EventEncoder:
    """Encodes `ChangeEvent`s with the writer schema of their own `schema_version`."""

    def __init__(
        self,
        registry: SchemaRegistry,
        topic_for: Callable[[str], str],
        *,
        catalog: Catalog | None = None,
        auto_register: bool = False,
    ) -> None:
        self._registry = registry
        self._topic_for = topic_for
        self._catalog = catalog or default_catalog()
        self._auto_register = auto_register
        self._ids: dict[tuple[str, int], int] = {}
        self._branches: dict[tuple[str, int], tuple[tuple[str, str], ...]] = {}

    async def schema_id(self, entity: str, version: int) -> int:
        """Registry id of the event schema of `entity` v`version` under its topic's subject (cached)."""
        key = (entity, version)
        cached = self._ids.get(key)
        if cached is not None:
            return cached
        schema = self._catalog.schema(entity, version)
        subject = subject_for(self._topic_for(entity))
        if self._auto_register:
            schema_id = await self._registry.register(subject, schema.text)
        else:
            found = await self._registry.lookup(subject, schema.text)
            if found is None:
                raise ConfigurationError(
                    f"{entity} v{version} is not registered under {subject}; run `keel schemas register` first"
                )
            schema_id = found.schema_id
        self._ids[key] = schema_id
        return schema_id

    async def encode(self, event: ChangeEvent) -> bytes:
        """The Confluent-framed Avro value of `event` (ValidationError if it does not fit its schema)."""
        if event.entity_type not in self._catalog.schemas:
            raise ValidationError(f"unknown entity type {event.entity_type!r}", field="entity_type")
        key = (event.entity_type, event.schema_version)
        schema = self._catalog.schema(*key)
        schema_id = await self.schema_id(*key)
        branches = self._branches.get(key)
        if branches is None:
            branches = self._branches[key] = union_branches(schema.parsed)
        # Union branches named up front: fastavro otherwise validates the payload to find its branch.
        return frame(schema_id, encode_body(with_branches(event.to_avro(), branches), schema.parsed))

    async def record(self, event: ChangeEvent, headers: TraceHeaders | None = None) -> OutgoingRecord:
        """A log record for `event`: its entity's topic, keyed by entity id, with Keel's headers."""
        values = dict(headers.values) if headers else {}
        values.setdefault(TraceHeaders.TENANT, event.tenant_id.encode())
        values.setdefault(TraceHeaders.DEVICE, event.device_id.encode())
        values.setdefault(TraceHeaders.SCHEMA_VERSION, str(event.schema_version).encode())
        return OutgoingRecord(
            topic=self._topic_for(event.entity_type),
            key=event.entity_id.encode(),
            value=await self.encode(event),
            headers=tuple(values.items()),
        )
