"""The Kafka topics of the data path, as both services create them: change topics and the dead-letter topic.

The gateway and the projector each create whatever is missing at start (whichever starts first), so their
specs must agree; they live here because both may import `projections` (producers may not import
consumers). Change topics keep records forever (`retention.ms=-1`): the log is the source of truth that
rebuilds replay from the start. Only the projector writes the DLQ, so only it creates it.
"""

from __future__ import annotations

from keel.kafka_adapter import TopicSpec
from keel.settings import Settings
from schemas.catalog import Catalog, default_catalog

__all__ = ["change_topic_specs", "change_topics", "topic_specs"]

_KEEP_FOREVER = {"retention.ms": "-1"}


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
