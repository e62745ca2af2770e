"""A finished chaos run leaves nothing behind on the shared stack: its topics, schema and consumer groups go,
and nobody else's group does, even one whose name starts like the run's."""

from __future__ import annotations

import secrets

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka.admin import AdminClient

from deploy.chaos.context import drop_run_data
from keel.kafka_adapter import (
    TopicSpec,
    client_options,
    delete_groups,
    ensure_topics,
    groups_named_after,
    librdkafka_options,
)
from keel.settings import Settings
from tests.support.services import Services, consumer_groups


def test_the_run_groups_are_its_own_group_and_its_dashed_children() -> None:
    listed = ["chaos-r5-1", "chaos-r5-1-own", "chaos-r5-1-relay", "chaos-r5-10", "chaos-r5-1x", "other"]
    assert groups_named_after(["chaos-r5-1"], listed) == ["chaos-r5-1", "chaos-r5-1-own", "chaos-r5-1-relay"]
    assert groups_named_after(["chaos-r5-2"], listed) == []


def test_a_broker_that_does_not_answer_costs_the_clean_up_nothing_but_a_warning() -> None:
    unreachable = Settings(kafka_bootstrap="127.0.0.1:1")
    assert delete_groups(unreachable, ["chaos-r5-1"], timeout_s=1.0) == []


async def _commit(settings: Settings, group: str, partition: TopicPartition) -> None:
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **client_options(settings))
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.commit({partition: 0})
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_dropping_a_runs_data_deletes_its_topics_and_groups_and_no_one_elses(services: Services) -> None:
    run_id = f"test-{secrets.token_hex(3)}"
    settings = services.settings(topic_prefix=f"chaos-{run_id}", pg_schema=f"chaos_{run_id.replace('-', '_')}")
    settings = settings.model_copy(update={"consumer_group": f"chaos-{run_id}"})
    topic = f"{settings.topic_prefix}.task.changes"
    await ensure_topics(settings, [TopicSpec(topic, partitions=1, replication=1)])
    mine = [settings.consumer_group, f"{settings.consumer_group}-own"]
    neighbour = f"{settings.consumer_group}x"
    for group in [*mine, neighbour]:
        await _commit(settings, group, TopicPartition(topic, 0))
    assert set(mine) | {neighbour} <= consumer_groups(settings)

    await drop_run_data(settings)

    left = consumer_groups(settings)
    assert not set(mine) & left
    assert neighbour in left
    admin = AdminClient({**librdkafka_options(settings), "log_level": 0})
    assert topic not in admin.list_topics(timeout=10).topics
    admin.delete_consumer_groups([neighbour], request_timeout=10)[neighbour].result()
