"""The partner contract as an AsyncAPI 3.0 document, generated from the code (never written by hand).

Everything a partner relies on comes from the code that produces it: from `schemas/`, one channel per entity
topic `<prefix>.<entity>.changes` with one message per schema version (the Avro event schema, Confluent wire
format, subject by TopicNameStrategy), the key (`entity_id`), the headers (`TraceHeaders`), each subject's
compatibility level and each version's place in the rollout (`subjects.toml`) and the deprecated fields of
each version; from `consumers.dead_letter`, the headers of the dead-letter topic; from
`schemas/state_schema.py`, one channel per resolved-state topic `<prefix>.<entity>.state` (compacted, keyed
`<tenant_id>/<entity_id>`). `render_asyncapi` gives the YAML text committed as `docs/asyncapi.yaml`; a test
regenerates it to catch drift. Delivery semantics and ordering are properties of the design
(docs/architecture.md), stated here once.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from consumers import dead_letter
from keel import __version__
from schemas.catalog import Catalog, EntitySchema, subject_for
from schemas.envelope import TraceHeaders
from schemas.state_schema import state_value_schema

__all__ = [
    "ASYNCAPI_VERSION",
    "AVRO_SCHEMA_FORMAT",
    "CHANGE_TOPIC_CONFIG",
    "KAFKA_BINDING_VERSION",
    "STATE_TOPIC_CONFIG",
    "build_asyncapi",
    "render_asyncapi",
    "version_status",
]

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
AVRO_SCHEMA_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
# Change topics are the source of truth projections are rebuilt from: they are never compacted or expired.
CHANGE_TOPIC_CONFIG: dict[str, Any] = {"cleanup.policy": ["delete"], "retention.ms": -1}
# State topics keep the newest record of each key (projections/topics.py creates them so).
STATE_TOPIC_CONFIG: dict[str, Any] = {"cleanup.policy": ["compact"], "retention.ms": -1}
LOCAL_BOOTSTRAP = "127.0.0.1:9092"
LOCAL_REGISTRY_URL = "http://127.0.0.1:8081/apis/ccompat/v7"
CLUSTER_BOOTSTRAP = "keel-kafka-bootstrap.keel.svc:9093"
CLUSTER_REGISTRY_URL = "http://keel-registry.keel.svc:8080/apis/ccompat/v7"

_HEADERS: dict[str, str] = {
    TraceHeaders.TRACEPARENT: "W3C trace context of the write (https://www.w3.org/TR/trace-context/); "
    "continue it to link your processing to the device's push.",
    TraceHeaders.TRACESTATE: "W3C trace state, vendor-specific; pass it on unchanged.",
    TraceHeaders.TENANT: "tenant_id of the event, UTF-8; lets a consumer filter without decoding the value.",
    TraceHeaders.DEVICE: "device_id of the event, UTF-8.",
    TraceHeaders.SCHEMA_VERSION: "schema_version of the payload as decimal ASCII (the same as the value's field).",
    TraceHeaders.ACCEPTED_AT_MS: "When the gateway accepted the change: Unix epoch milliseconds, decimal ASCII.",
}

_DEAD_LETTER_HEADERS: dict[str, str] = {
    dead_letter.SOURCE_TOPIC: "Topic the record was read from.",
    dead_letter.SOURCE_PARTITION: "Its partition, decimal ASCII.",
    dead_letter.SOURCE_OFFSET: "Its offset, decimal ASCII.",
    dead_letter.ERROR_CLASS: "Class of the permanent error, e.g. DecodeError, UnknownSchemaError, ValidationError.",
    dead_letter.ERROR_MESSAGE: f"What was wrong, UTF-8, cut at {dead_letter.MAX_MESSAGE_BYTES} bytes.",
    dead_letter.SCHEMA_ID: "Writer schema id read from the value, decimal ASCII; empty when none could be read.",
}

_DESCRIPTION = """\
Every change accepted by Keel is an Avro event on a Kafka topic per entity type, `{prefix}.<entity>.changes`.

**Wire format.** Values are Confluent wire format: magic byte `0`, the 4-byte big-endian schema id, then Avro
binary. Subjects follow TopicNameStrategy (`<topic>-value`); fetch writer schemas by id from the registry
(any Confluent-compatible client works). Keys are the `entity_id` as plain UTF-8 bytes, not Avro.

**Ordering.** Events of one entity share a key and therefore a partition: they are read in the order they
were accepted. Nothing is ordered across entities or topics. The order of acceptance is not the order of
the edits (devices work offline): the winner of concurrent edits is decided by the hybrid logical clock
`hlc`, per field, as docs/partners.md explains, so folding events in any order gives the same state.

**Delivery.** Producers are idempotent with `acks=all` (no loss, no duplicates from retries), but a
consumer sees each event *at least once* (after a rebalance or restart it may read some again): make your
processing idempotent with `event_id`, or with the dedup key `(device_id, device_seq)`. Keel's own
projection into PostgreSQL is exactly once. Topics are kept forever (`retention.ms=-1`), so a new consumer
can replay everything from the beginning.

**Compatibility.** Every subject has a compatibility level (FULL_TRANSITIVE for the entities here): a
reader on any version reads events written with any other, so readers need not upgrade in step with
writers. Each message below is one schema version; `x-keel-status` says where it is in its lifecycle.

**Deprecation.** A version below an entity's `minimum_version` is no longer spoken by any device, but its
events stay in the log and stay readable. A field marked deprecated is still written and kept in step with
its replacement; it is removed only in a new version once every cohort is past the version that needs it,
and the compatibility level still forbids any change that would break an existing reader.

**Sensitive fields.** `x-keel-sensitive-fields` lists payload fields Keel encrypts at rest in its own
projection tables. It is policy, not part of the Avro schema: the events in the log carry these values as
written, so treat them with care in your own stores.

**Resolved state.** `{prefix}.<entity>.state` holds each entity's merged state after conflict resolution,
as Keel's projection has it: one record per change of an entity, keyed `<tenant_id>/<entity_id>` (UTF-8),
compacted so the last record of a key is current. A deleted entity is a record with `deleted = true` and a
null `state` (never a null tombstone). At least once and ordered per key: a record may repeat, never go back.

**Dead letters.** Events the projector cannot apply (undecodable bytes, unknown schema id, failed
validation) go to `{prefix}.dlq` unchanged, with headers naming the source and the reason.
"""


def version_status(catalog: Catalog, entity: str, version: int) -> str:
    """Where a version is in its lifecycle: retired, deprecated, stable, rollout or staged (subjects.toml)."""
    policy = catalog.policy(entity)
    if version < policy.minimum_version:
        return "retired"
    if version < policy.stable_version:
        return "deprecated"
    if version == policy.stable_version:
        return "stable"
    if version <= policy.newest_version:
        return "rollout"
    return "staged"


def _message_key(entity: str, version: int) -> str:
    return f"{_camel(entity)}ChangeV{version}"


def _camel(entity: str) -> str:
    head, *rest = entity.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _deprecated_fields(schema: EntitySchema) -> list[dict[str, str]]:
    return [
        {"field": raw["name"], "since": str(raw["deprecated"]), "note": str(raw.get("doc", ""))}
        for raw in schema.payload["fields"]
        if "deprecated" in raw
    ]


def _message(catalog: Catalog, topic: str, schema: EntitySchema) -> dict[str, Any]:
    status = version_status(catalog, schema.entity, schema.version)
    message: dict[str, Any] = {
        "name": schema.envelope["name"],
        "title": f"{schema.envelope['name']}, schema version {schema.version}",
        "summary": f"One change to one {schema.entity} written with payload schema v{schema.version} ({status}).",
        "contentType": "application/octet-stream",
        "headers": {"$ref": "#/components/schemas/ChangeHeaders"},
        "payload": {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": copy.deepcopy(schema.envelope)},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "entity_id as UTF-8 bytes (not Avro-encoded)."},
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "schemaLookupStrategy": "TopicNameStrategy",
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
        "x-keel-subject": subject_for(topic),
        "x-keel-schema-version": schema.version,
        "x-keel-status": status,
    }
    deprecated = _deprecated_fields(schema)
    if deprecated:
        message["x-keel-deprecated-fields"] = deprecated
    sensitive = [spec.name for spec in schema.fields if spec.sensitive]
    if sensitive:
        # Policy from subjects.toml, not part of the registered schema: encrypted at rest in the projections.
        message["x-keel-sensitive-fields"] = sensitive
    return message


def _add_state_channel(
    catalog: Catalog,
    entity: str,
    topic_prefix: str,
    *,
    channels: dict[str, Any],
    operations: dict[str, Any],
    messages: dict[str, Any],
) -> None:
    """The compacted resolved-state topic of one entity: its channel, message and receive operation."""
    topic = f"{topic_prefix}.{entity}.state"
    key = f"{_camel(entity)}State"
    schema = state_value_schema(catalog, entity)
    messages[key] = {
        "name": schema["name"],
        "title": f"{schema['name']}: the merged state of one {entity}",
        "summary": f"The state of one {entity} after conflict resolution, in payload schema "
        f"v{catalog.current_version(entity)} (deleted=true and state null when deleted).",
        "contentType": "application/octet-stream",
        "headers": {"$ref": "#/components/schemas/StateHeaders"},
        "payload": {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": schema},
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "'<tenant_id>/<entity_id>' as UTF-8 bytes (not Avro): entity ids are unique "
                    "only within a tenant, and compaction needs one key per entity.",
                },
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "schemaLookupStrategy": "TopicNameStrategy",
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
        "x-keel-subject": subject_for(topic),
        "x-keel-schema-version": catalog.current_version(entity),
    }
    channel_key = f"{_camel(entity)}State"
    channels[channel_key] = {
        "address": topic,
        "title": f"{entity} resolved state",
        "description": (
            f"The merged state of every {entity} after conflict resolution, one record per change, keyed "
            f"'<tenant_id>/<entity_id>'; compacted: the last record of a key is current. Written by the state "
            f"relay from the projection (at least once, ordered per key). Subject `{subject_for(topic)}`."
        ),
        "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        "bindings": {
            "kafka": {
                "topic": topic,
                "topicConfiguration": copy.deepcopy(STATE_TOPIC_CONFIG),
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    operations[f"receive{channel_key[0].upper()}{channel_key[1:]}"] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{channel_key}"},
        "summary": f"Consume the resolved state of {entity}s (at least once, ordered per key).",
        "description": (
            "Read from the beginning to get every entity's current state, then keep reading for changes. A "
            "record may repeat (the same or a newer state), never go back: keep the last record per key."
        ),
        "messages": [{"$ref": f"#/channels/{channel_key}/messages/{key}"}],
        "bindings": {
            "kafka": {
                "groupId": {"type": "string", "description": "Your own group, e.g. `<partner>.<purpose>`."},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def build_asyncapi(
    catalog: Catalog,
    *,
    topic_prefix: str = "keel",
    version: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the catalog's topics, as plain data (deterministic for one catalog)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for entity in catalog.entities():
        topic = f"{topic_prefix}.{entity}.changes"
        policy = catalog.policy(entity)
        channel_key = f"{_camel(entity)}Changes"
        refs = {}
        for schema_version in catalog.versions(entity):
            key = _message_key(entity, schema_version)
            messages[key] = _message(catalog, topic, catalog.schema(entity, schema_version))
            refs[key] = {"$ref": f"#/components/messages/{key}"}
        channels[channel_key] = {
            "address": topic,
            "title": f"{entity} changes",
            "description": (
                f"Every accepted change to a {entity}, keyed by entity_id, one message per payload schema version. "
                f"Subject `{subject_for(topic)}` at compatibility level {policy.compatibility}."
            ),
            "messages": refs,
            "bindings": {
                "kafka": {
                    "topic": topic,
                    "topicConfiguration": copy.deepcopy(CHANGE_TOPIC_CONFIG),
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
            "x-keel-compatibility": policy.compatibility,
            "x-keel-versions": {
                "minimum": policy.minimum_version,
                "stable": policy.stable_version,
                "newest": policy.newest_version,
                "current": catalog.current_version(entity),
            },
        }
        channel_ref = {"$ref": f"#/channels/{channel_key}"}
        message_refs = [{"$ref": f"#/channels/{channel_key}/messages/{key}"} for key in refs]
        operations[f"receive{channel_key[0].upper()}{channel_key[1:]}"] = {
            "action": "receive",
            "channel": channel_ref,
            "summary": f"Consume {entity} changes (at least once, ordered per entity_id).",
            "description": (
                "Use a consumer group of your own (your principal may only use groups under its prefix) and "
                "make processing idempotent by event_id."
            ),
            "messages": message_refs,
            "bindings": {
                "kafka": {
                    "groupId": {"type": "string", "description": "Your own group, e.g. `<partner>.<purpose>`."},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
        operations[f"send{channel_key[0].upper()}{channel_key[1:]}"] = {
            "action": "send",
            "channel": channel_ref,
            "summary": f"Produce {entity} changes (principals granted Write on the topic only).",
            "description": (
                "Key = entity_id (UTF-8). Produce with acks=all and idempotence on; with librdkafka clients "
                "(confluent-kafka) set `partitioner=murmur2_random` so a key lands on the partition Keel's "
                "Java-compatible producers use. Use a device_id of your own with a strictly increasing "
                "device_seq from 1, and the stable schema version of the entity."
            ),
            "messages": message_refs,
            "x-keel-producer-config": {"acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random"},
        }
    for entity in catalog.entities():
        _add_state_channel(catalog, entity, topic_prefix, channels=channels, operations=operations, messages=messages)
    dlq = f"{topic_prefix}.dlq"
    channels["deadLetters"] = {
        "address": dlq,
        "title": "dead letters",
        "description": (
            "Records the projector could not apply, byte for byte as they arrived (key, value and headers), with "
            "headers naming the source topic, partition and offset, the error class and message, and the schema "
            "id when one was read. Nothing transient ever lands here (the projector pauses and retries instead). "
            "At least once: a crash between writing a dead letter and committing past it can write it twice."
        ),
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        "bindings": {
            "kafka": {
                "topic": dlq,
                "topicConfiguration": copy.deepcopy(CHANGE_TOPIC_CONFIG),
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    operations["receiveDeadLetters"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/deadLetters"},
        "summary": "Inspect records that could not be applied (operators; partners are not granted this topic).",
        "messages": [{"$ref": "#/channels/deadLetters/messages/deadLetter"}],
    }
    messages["deadLetter"] = {
        "name": "DeadLetter",
        "title": "A record the projector could not apply",
        "contentType": "application/octet-stream",
        "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
        "payload": {"type": "string", "format": "binary", "description": "The original value, unchanged."},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "The original key, unchanged."},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Keel change events",
            "version": version or __version__,
            "description": _DESCRIPTION.format(prefix=topic_prefix),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "tags": [{"name": "kafka"}, {"name": "avro"}, {"name": "offline-first"}],
        },
        "defaultContentType": "application/octet-stream",
        "servers": {
            "local": {
                "host": LOCAL_BOOTSTRAP,
                "protocol": "kafka",
                "description": "`keel stack up` or `docker compose -f deploy/compose.yaml up`: plaintext, loopback.",
                "bindings": {
                    "kafka": {
                        "schemaRegistryUrl": LOCAL_REGISTRY_URL,
                        "schemaRegistryVendor": "apicurio",
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                },
            },
            "cluster": {
                "host": "{bootstrap}",
                "protocol": "kafka-secure",
                "description": "A Kubernetes deployment (deploy/k8s): TLS with the cluster CA, SCRAM-SHA-512.",
                "variables": {
                    "bootstrap": {
                        "default": CLUSTER_BOOTSTRAP,
                        "description": "Bootstrap address your operator gives you (an external listener "
                        "for partners outside the cluster).",
                    }
                },
                "security": [{"$ref": "#/components/securitySchemes/scram"}],
                "bindings": {
                    "kafka": {
                        "schemaRegistryUrl": CLUSTER_REGISTRY_URL,
                        "schemaRegistryVendor": "apicurio",
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                },
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {
                "ChangeHeaders": {
                    "type": "object",
                    "description": "Kafka headers beside the value; all optional, values are UTF-8 text.",
                    "properties": {name: {"type": "string", "description": text} for name, text in _HEADERS.items()},
                },
                "StateHeaders": {
                    "type": "object",
                    "description": "Kafka headers of a state record; values are UTF-8 text.",
                    "properties": {
                        TraceHeaders.TENANT: {"type": "string", "description": "tenant_id of the entity."},
                        TraceHeaders.SCHEMA_VERSION: {
                            "type": "string",
                            "description": "schema_version of `state`, decimal ASCII.",
                        },
                        TraceHeaders.TRACEPARENT: {
                            "type": "string",
                            "description": "W3C trace context of the projection of the newest change, when traced.",
                        },
                    },
                    "required": [TraceHeaders.TENANT],
                },
                "DeadLetterHeaders": {
                    "type": "object",
                    "description": "The original record's headers, plus these naming its source and the reason.",
                    "properties": {
                        name: {"type": "string", "description": text} for name, text in _DEAD_LETTER_HEADERS.items()
                    },
                    "required": sorted(_DEAD_LETTER_HEADERS),
                    "additionalProperties": {"type": "string"},
                },
            },
            "securitySchemes": {
                "scram": {
                    "type": "scramSha512",
                    "description": "SASL/SCRAM-SHA-512 over TLS; one principal per partner with ACLs on its topics.",
                }
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """YAML that reads well in review: multi-line text as literal blocks, sequences indented."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        """Indent sequences under their key (the style yamllint and most editors expect)."""
        del indentless  # PyYAML asks for indentless block sequences under mappings; never give them
        super().increase_indent(flow=flow, indentless=False)

    def ignore_aliases(self, data: Any) -> bool:
        """Write shared values out in full: a reader of the contract should never chase `&id001` anchors."""
        del data
        return True


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_text)


def render_asyncapi(document: dict[str, Any]) -> str:
    """The document as YAML text, stable across runs (keys in construction order)."""
    header = "# Generated by `keel partners asyncapi` from schemas/ — do not edit; regenerate instead.\n"
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
