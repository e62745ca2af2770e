"""One definition of the data path's topics for both services that create them."""

from __future__ import annotations

from consumers import projector
from keel.settings import Settings
from projections.topics import change_topic_specs, change_topics, topic_specs
from schemas.catalog import default_catalog


def test_the_gateway_creates_the_projectors_change_topics_and_only_the_projector_the_dlq() -> None:
    settings = Settings(topic_prefix="acme", change_topic_partitions=6, change_topic_replication=3)
    gateway = change_topic_specs(settings)
    both = topic_specs(settings)
    assert [s.name for s in gateway] == [f"acme.{entity}.changes" for entity in default_catalog().entities()]
    assert [s.name for s in gateway] == change_topics(settings)
    assert [(s.name, s.partitions, s.replication, s.config) for s in both[:-1]] == [
        (s.name, 6, 3, {"retention.ms": "-1"}) for s in gateway
    ], "kept forever: rebuilds replay the log from the start"
    dlq = both[-1]
    assert (dlq.name, dlq.partitions, dlq.replication, dlq.config) == (settings.dlq_topic, 6, 3, {})
    assert projector.topic_specs is topic_specs, "the projector's export is the shared definition"
    gateway[0].config["retention.ms"] = "1"
    assert change_topic_specs(settings)[0].config == {"retention.ms": "-1"}, "each call gets its own config"
