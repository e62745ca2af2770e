"""How big each stage of `keel bench` is: the full run, `--quick`, and the tiny smoke size the tests use."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = ["STAGES", "BenchConfig", "Size"]

STAGES = ("codec", "produce", "project", "end_to_end", "catch_up", "fan_out", "memory")


class Size(enum.Enum):
    """Preset sizes."""

    FULL = "full"
    QUICK = "quick"
    TINY = "tiny"


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and repetitions of every stage (see docs/performance.md for what each measures)."""

    size: Size
    repetitions: int
    heavy_repetitions: int  # of the stages that run services for long (end_to_end, memory)
    codec_events: int
    produce_ops: int
    produce_devices: int
    push_batch: int
    project_events: int
    e2e_devices: int
    e2e_seconds: float
    latency_seconds: float
    catch_up_rows: int
    fan_out_changes: int
    memory_backlog: int  # the small backlog; the large one is 10 times this
    payload_sizes: tuple[int, ...]
    payload_bytes: int  # total payload bytes pushed per payload size
    profile: bool = False

    @classmethod
    def of(cls, size: Size, *, repetitions: int | None = None, profile: bool = False) -> BenchConfig:
        """The preset `size`, optionally with another number of repetitions."""
        if size is Size.FULL:
            config = cls(
                size=size,
                repetitions=3,
                heavy_repetitions=3,
                codec_events=50_000,
                produce_ops=24_000,
                produce_devices=32,
                push_batch=200,
                project_events=20_000,
                e2e_devices=64,
                e2e_seconds=40.0,
                latency_seconds=20.0,
                catch_up_rows=100_000,
                fan_out_changes=1_500,
                memory_backlog=10_000,
                payload_sizes=(100, 1_000, 10_000, 100_000),
                payload_bytes=8_000_000,
            )
        elif size is Size.QUICK:
            config = cls(
                size=size,
                repetitions=3,
                heavy_repetitions=1,
                codec_events=20_000,
                produce_ops=6_000,
                produce_devices=16,
                push_batch=200,
                project_events=5_000,
                e2e_devices=32,
                e2e_seconds=15.0,
                latency_seconds=8.0,
                catch_up_rows=20_000,
                fan_out_changes=600,
                memory_backlog=2_000,
                payload_sizes=(100, 10_000, 100_000),
                payload_bytes=1_000_000,
            )
        else:
            config = cls(
                size=size,
                repetitions=1,
                heavy_repetitions=1,
                codec_events=300,
                produce_ops=400,
                produce_devices=4,
                push_batch=50,
                project_events=400,
                e2e_devices=4,
                e2e_seconds=2.0,
                latency_seconds=2.0,
                catch_up_rows=600,
                fan_out_changes=60,
                memory_backlog=100,
                payload_sizes=(100, 100_000),
                payload_bytes=60_000,
            )
        config = replace(config, profile=profile)
        if repetitions is None:
            return config
        return replace(config, repetitions=repetitions, heavy_repetitions=repetitions)
