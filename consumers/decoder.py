"""Log records to change events in the current version: unframe, writer schema, decode, validate, migrate.

The body is decoded with the writer schema alone (fetched by id from the registry, parsed once per id) and
validated in the writer's version; then `MigrationRegistry.migrate` moves the payload dict from the event's
`schema_version` to the current one — Avro-style resolution plus the code steps in one place, which
tests/consumers/test_decoder.py checks equals resolving into the current reader schema and then running the
steps. Changed fields end explicit. Failures are sorted: anything wrong with the record itself is
`Undecodable` (the runtime dead-letters it); an unreachable registry raises `ServiceUnavailableError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace

from consumers.signature_check import SignatureCheck
from keel.errors import DecodeError, IntegrityError, PermanentError, UnknownSchemaError, ValidationError
from keel.event_log import LogRecord
from projections.batch import SourcedEvent, SourcePosition
from projections.entity_tables import entity_tables, raise_if_unprojectable
from schemas.catalog import Catalog, default_catalog
from schemas.codec import ReadPlan, read_payload_form, read_plan, to_payload_form, unframe
from schemas.envelope import ChangeEvent
from schemas.migrations import MigrationRegistry
from schemas.registry import SchemaRegistry
from schemas.validation import validate_event

__all__ = ["Decoded", "EventDecoder", "Undecodable", "entity_of_topic", "to_payload_form"]


def entity_of_topic(prefix: str) -> Callable[[str], str | None]:
    """Maps `<prefix>.<entity>.changes` to `<entity>` (None for other topics)."""
    head, tail = f"{prefix}.", ".changes"

    def entity(topic: str) -> str | None:
        if topic.startswith(head) and topic.endswith(tail):
            return topic[len(head) : -len(tail)] or None
        return None

    return entity


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A record that can never be projected, why, and the envelope when it could be read."""

    record: LogRecord
    error: PermanentError
    schema_id: int | None = None
    envelope: ChangeEvent | None = None


Decoded = SourcedEvent | Undecodable


class EventDecoder:
    """Decodes change-topic records with registry-governed writer schemas."""

    def __init__(
        self,
        registry: SchemaRegistry,
        migrations: MigrationRegistry,
        entity_for_topic: Callable[[str], str | None],
        *,
        catalog: Catalog | None = None,
        signatures: SignatureCheck | None = None,
    ) -> None:
        self._registry = registry
        self._signatures = signatures  # None: no signature checks (tests of other concerns, partner tooling)
        self._migrations = migrations
        self._entity_for_topic = entity_for_topic
        self._catalog = catalog or default_catalog()
        self._tables = entity_tables(catalog)
        self._writers: dict[int, ReadPlan] = {}

    async def _writer_schema(self, schema_id: int) -> ReadPlan:
        cached = self._writers.get(schema_id)
        if cached is not None:
            return cached
        text = await self._registry.get_schema(schema_id)  # UnknownSchemaError, ServiceUnavailableError
        try:
            plan = read_plan(json.loads(text))
        except Exception as error:  # fastavro raises several types for schemas it cannot use
            raise DecodeError(f"schema id {schema_id} is not a usable Avro schema: {error}", schema_id) from error
        self._writers[schema_id] = plan
        return plan

    async def decode(self, record: LogRecord) -> Decoded:
        """The event in the current version, or `Undecodable`; ServiceUnavailableError when the registry is down."""
        schema_id: int | None = None
        envelope: ChangeEvent | None = None
        try:
            schema_id, body = unframe(record.value)
            writer = await self._writer_schema(schema_id)
            raw = read_payload_form(body, writer, schema_id)  # = to_payload_form(decode_body(...)), cheaper
            try:
                envelope = ChangeEvent.from_avro(raw)
            except (KeyError, ValueError, TypeError) as error:
                raise DecodeError(f"not a Keel change event envelope: {error!r}", schema_id) from error
            # Verified in the writer's version, before any migration touches the payload (docs/security.md).
            chain = await self._signatures.chain_of(envelope, record.headers) if self._signatures else ()
            sourced = self._project(record, envelope, schema_id)
            return replace(sourced, chain=chain) if chain else sourced
        except (DecodeError, UnknownSchemaError, ValidationError, IntegrityError) as error:
            return Undecodable(record, error, schema_id, envelope)

    def _project(self, record: LogRecord, event: ChangeEvent, schema_id: int) -> SourcedEvent:
        expected = self._entity_for_topic(record.topic)
        if expected is None or event.entity_type != expected:
            raise ValidationError(
                f"a {event.entity_type!r} event on topic {record.topic} (expected {expected!r})", field="entity_type"
            )
        validate_event(event, self._catalog)
        migrated = self._migrations.migrate(
            event.entity_type, event.payload, event.changed_fields, from_version=event.schema_version
        )
        current = event.with_payload(migrated.payload, migrated.changed_fields, migrated.version)
        raise_if_unprojectable(
            self._tables[event.entity_type],
            current.payload,
            {"tenant_id": event.tenant_id, "device_id": event.device_id, "entity_id": event.entity_id},
        )
        return SourcedEvent(
            current, SourcePosition(record.topic, record.partition, record.offset), schema_id, tuple(migrated.cautions)
        )
