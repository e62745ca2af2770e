"""KRaft cluster ids never trip `kafka-storage format`: new ids never start with '-', and an id kept from
before that does is still passed as a value (a CI run once drew `-aI3DYU4QSi6PhU6BOxZuA` and the stack
did not start: `argument --cluster-id/-t: expected one argument`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.kafka_cluster import KafkaCluster, new_cluster_id
from keel.settings import Settings


def test_an_id_that_would_start_with_a_dash_is_drawn_again() -> None:
    draws: Iterator[bytes] = iter([b"\xf8" * 16, b"\x01" * 16])
    drawn = new_cluster_id(lambda n: next(draws)[:n])
    assert drawn == "AQEBAQEBAQEBAQEBAQEBAQ"


def test_new_ids_are_22_url_safe_characters() -> None:
    for _ in range(500):
        drawn = new_cluster_id()
        assert len(drawn) == 22
        assert not drawn.startswith("-")
        assert set(drawn) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.integration
def test_storage_is_formatted_with_an_id_that_starts_with_a_dash(tmp_path: Path) -> None:
    settings = Settings()
    libs = settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs"
    assert libs.is_dir(), f"Kafka jars missing in {libs}: `keel stack up` downloads them"
    cluster = KafkaCluster(tmp_path / "kafka", libs, base_port=19392)
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "cluster.id").write_text("-aI3DYU4QSi6PhU6BOxZuA\n")
    cluster.prepare()
    meta = (tmp_path / "kafka" / "node-1" / "data" / "meta.properties").read_text()
    assert "cluster.id=-aI3DYU4QSi6PhU6BOxZuA" in meta
