"""The value schema of the resolved-state topics `<prefix>.<entity>.state`, generated from the catalog.

One record per change of an entity carries its merged state after conflict resolution, as the projection
has it: the entity's newest payload record (the server's model) wrapped with who and what it is
(`tenant_id`, `entity_type`, `entity_id`), whether it is deleted, the clock of its newest write and the
outbox position it was published from. A deleted entity is `deleted = true` with `state = null` — a value,
not a Kafka null tombstone, because log compaction removes tombstones after `delete.retention.ms` and a
reader starting later would never learn that the entity was deleted (docs/contract.md).

The record is named `dev.keel.state.<Entity>State`. A new payload version changes this schema as it changes
the change topic's (fields added with defaults), so the same compatibility rules keep old readers working.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import fastavro

from schemas.catalog import Catalog

__all__ = ["STATE_NAMESPACE", "parsed_state_schema", "state_record_name", "state_schema_text", "state_value_schema"]

STATE_NAMESPACE = "dev.keel.state"


def state_record_name(entity: str) -> str:
    """`TaskState` for `task`, `LineItemState` for `line_item`."""
    return "".join(part.capitalize() for part in entity.split("_")) + "State"


def state_value_schema(catalog: Catalog, entity: str) -> dict[str, Any]:
    """The Avro schema (JSON form) of `entity`'s state records: its newest payload record, wrapped."""
    schema = catalog.schema(entity)
    return {
        "type": "record",
        "name": state_record_name(entity),
        "namespace": STATE_NAMESPACE,
        "doc": f"The merged state of one {entity} after conflict resolution, as Keel's projection has it. "
        "Keyed by '<tenant_id>/<entity_id>' (UTF-8); the topic is compacted: the last record of a key is current.",
        "fields": [
            {"name": "tenant_id", "type": "string", "doc": "Tenant owning the entity."},
            {"name": "entity_type", "type": "string", "doc": "Entity type, the <entity> of the topic."},
            {"name": "entity_id", "type": "string", "doc": "Id of the entity within its tenant."},
            {
                "name": "deleted",
                "type": "boolean",
                "doc": "The entity is deleted (state is null). A value, not a null tombstone: compaction keeps it.",
            },
            {
                "name": "schema_version",
                "type": "int",
                "doc": "Version of the payload schema `state` is written in (the newest when published).",
            },
            {
                "name": "state",
                "type": ["null", copy.deepcopy(schema.payload)],
                "default": None,
                "doc": "Every field as users see it (defaults for fields never written); null when deleted.",
            },
            {
                "name": "hlc",
                "type": [
                    "null",
                    {
                        "type": "record",
                        "name": "StateHlc",
                        "doc": "Hybrid logical clock of the newest write (or delete) merged into the state.",
                        "fields": [
                            {"name": "physical_ms", "type": "long"},
                            {"name": "logical", "type": "int"},
                            {"name": "node", "type": "string"},
                        ],
                    },
                ],
                "default": None,
                "doc": "Clock of the newest write merged into this state: a newer state has a greater clock.",
            },
            {
                "name": "last_event_id",
                "type": ["null", "string"],
                "default": None,
                "doc": "event_id of that newest write (find it on the change topic).",
            },
            {
                "name": "last_device_id",
                "type": ["null", "string"],
                "default": None,
                "doc": "device_id of that newest write.",
            },
            {
                "name": "source_cursor",
                "type": "string",
                "doc": "Outbox position ('<tx>.<pos>') this record was published for; 'snapshot:<tx>.<pos>' when "
                "it was republished by a snapshot.",
            },
        ],
    }


def state_schema_text(catalog: Catalog, entity: str) -> str:
    """The state schema as compact JSON, as the relay registers it."""
    return json.dumps(state_value_schema(catalog, entity), separators=(",", ":"))


def parsed_state_schema(catalog: Catalog, entity: str) -> Any:
    """The state schema parsed by fastavro, for encoding."""
    return fastavro.parse_schema(state_value_schema(catalog, entity))
