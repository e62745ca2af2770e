"""`keel bench` at its tiny smoke size against the real stack: every stage runs and reports every figure.

Speed is never asserted (the machine is shared and the sizes are tiny): only that each figure exists, that its
ratio is the one its own samples give, that every op sent was projected exactly once, and that it all lands in
the JSON and in the document.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy.bench.context import BenchContext
from deploy.bench.report import BEGIN, END
from keel.kafka_adapter import groups_named_after
from keel.settings import Settings
from tests.support.services import Services, consumer_groups

pytestmark = pytest.mark.integration

FIGURES = [
    "codec.encode",
    "codec.decode",
    "codec.round_trip",
    "codec.encode_like_for_like",
    "codec.decode_like_for_like",
    "produce.gateway_in_process",
    "produce.gateway_http",
    "produce.gateway_unsampled_in_process",
    "produce.gateway_signed_in_process",
    "produce.confluent_kafka",
    "project.projector",
    "project.projector_record_spans_off",
    "project.raw_copy",
    "end_to_end.throughput",
    "end_to_end.latency_p99",
    "end_to_end.latency_p50",
    "catch_up.pull_and_apply",
    "fan_out.devices_100",
    "fan_out.devices_1000",
    "memory.gateway_backlog_10x",
    "memory.projector_backlog_10x",
    "memory.payload_100",
    "memory.payload_100000",
    "memory.gateway_payload_100000",
    "memory.projector_payload_100000",
]


def _ratio_from_samples(figure: dict[str, Any]) -> float:
    ours = statistics.median(figure["samples"]["ours"])
    baseline = statistics.median(figure["samples"]["baseline"])
    return float(ours / baseline if figure["higher_is_better"] else baseline / ours)


@pytest.mark.timeout(180)
def test_the_tiny_bench_reports_every_figure_with_a_ratio(services: Services, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEEL_")}
    env.update(
        KEEL_KAFKA_BOOTSTRAP=services.kafka_bootstrap,
        KEEL_REGISTRY_URL=services.registry_url,
        KEEL_DATABASE_URL=services.database_url,
        KEEL_LOG_LEVEL="WARNING",
    )
    env.update(services.kafka_env())
    document = tmp_path / "performance.md"
    report = tmp_path / "bench.json"
    keel = str(Path(sys.executable).with_name("keel"))
    finished = subprocess.run(
        [keel, "bench", "--tiny", "--json", str(report), "--doc", str(document)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    written = json.loads(report.read_text())
    assert written["errors"] == {}
    assert sorted(written["figures"]) == sorted(FIGURES)
    for key, figure in written["figures"].items():
        assert len(figure["samples"]["ours"]) == len(figure["samples"]["baseline"]) == 1, key
        assert all(value > 0 for value in figure["samples"]["ours"] + figure["samples"]["baseline"]), key
        assert math.isfinite(figure["ratio"]), key
        assert figure["ratio"] == pytest.approx(_ratio_from_samples(figure), rel=1e-3, abs=1e-4), key
    tallies = written["tallies"]
    assert {what.split(":")[0] for what in tallies} == {"project", "end_to_end", "catch_up", "memory"}
    for what, counts in tallies.items():
        assert counts["sent"] > 0, what
        assert counts["landed"] == counts["sent"], what
    assert {"cpu_model", "cores", "memory_gb"} <= set(written["machine"])
    assert {"python", "kafka", "postgresql", "registry", "aiokafka"} <= set(written["versions"])
    text = document.read_text()
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
    assert all(f"`{key}`" in text for key in FIGURES)
    # The run cleans up after itself: none of its consumer groups is left on the shared broker.
    groups = consumer_groups(services.settings())
    assert [g for g in groups if g.startswith(f"bench{written['run']['tag']}")] == []


def test_a_bench_run_owns_only_the_groups_named_after_its_prefixes() -> None:
    context = BenchContext(Settings(), tag="t1")
    first = context.names("project")

    def owned(group: str) -> bool:
        return groups_named_after(context.prefixes, [group]) == [group]

    assert owned(first.group)
    assert owned(f"{first.prefix}-projector-0")
    assert not owned(f"{first.prefix}x-group")
    assert not owned("bencht2project1-group")
