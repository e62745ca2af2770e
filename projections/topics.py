"""The Kafka topics of the data path: change topics, the dead-letter topic and the resolved-state topics.

The gateway and the projector each create whatever is missing at start (whichever starts first), so their
specs must agree; they live here because both may import `projections` (producers may not import
consumers). Change topics keep records forever (`retention.ms=-1`): the log is the source of truth that
rebuilds replay from the start. Only the projector writes the DLQ, so only it creates it. The state topics
`<prefix>.<entity>.state` (consumers/state_relay.py) are compacted — the last record of a key is the entity's
current state — and have as many partitions as the change topics; the state relay creates them.
"""

from __future__ import annotations

from keel.kafka_adapter import TopicSpec
from keel.settings import Settings
from schemas.catalog import Catalog, default_catalog

__all__ = [
    "STATE_TOPIC_CONFIG",
    "change_topic_specs",
    "change_topics",
    "state_topic",
    "state_topic_specs",
    "topic_specs",
]

_KEEP_FOREVER = {"retention.ms": "-1"}
# Compacted, never expired: a new reader gets the newest record of every key. Deletes are values with
# deleted=true (not null tombstones), so compaction never forgets that an entity was deleted.
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "retention.ms": "-1"}


def change_topics(settings: Settings, catalog: Catalog | None = None) -> list[str]:
    """The change topic of every entity type."""
    return [settings.topic_for(entity) for entity in (catalog or default_catalog()).entities()]


def change_topic_specs(settings: Settings, catalog: Catalog | None = None) -> list[TopicSpec]:
    """The change topics, kept forever (what the gateway creates)."""
    return [
        TopicSpec(topic, settings.change_topic_partitions, settings.change_topic_replication, dict(_KEEP_FOREVER))
        for topic in change_topics(settings, catalog)
    ]


def topic_specs(settings: Settings, catalog: Catalog | None = None) -> list[TopicSpec]:
    """The change topics and the DLQ (what the projector creates)."""
    specs = change_topic_specs(settings, catalog)
    specs.append(TopicSpec(settings.dlq_topic, settings.change_topic_partitions, settings.change_topic_replication))
    return specs


def state_topic(settings: Settings, entity: str) -> str:
    """Name of the resolved-state topic of an entity type: `<prefix>.<entity>.state`."""
    return f"{settings.topic_prefix}.{entity}.state"


def state_topic_specs(settings: Settings, catalog: Catalog | None = None) -> list[TopicSpec]:
    """The compacted state topics, partitioned like the change topics (what the state relay creates)."""
    return [
        TopicSpec(
            state_topic(settings, entity),
            settings.change_topic_partitions,
            settings.change_topic_replication,
            dict(STATE_TOPIC_CONFIG),
        )
        for entity in (catalog or default_catalog()).entities()
    ]
