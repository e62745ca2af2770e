"""Stage `codec`: the envelope encoded and decoded as the gateway and the projector do it, vs. bare fastavro.

Ours, encode: `EventEncoder.encode` — `ChangeEvent.to_avro`, union branch hints, fastavro, Confluent framing
(the registry id is looked up on the real registry once, then cached, as in the gateway). Ours, decode: what
`EventDecoder` runs before validation — unframe, read into payload form with the writer schema's read plan,
`ChangeEvent.from_avro`. Baseline: `fastavro.schemaless_writer` / `schemaless_reader` on the same record
(the `to_avro()` dict, prebuilt) with the same parsed schema, the way a plain fastavro user calls them. A
second, like-for-like baseline hands fastavro the branch-hinted record and the read plan's schema, so the
report also shows what the envelope layer itself costs. The variants are interleaved chunk by chunk (`CHUNK`)
and each one's rate is its events over the time summed over its chunks.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable

import fastavro

from deploy.bench.config import BenchConfig
from deploy.bench.context import BenchContext
from deploy.bench.figures import Figure, Goal, Target
from deploy.bench.workload import TASK_VERSION, Workload
from schemas.catalog import default_catalog
from schemas.codec import read_payload_form, read_plan, unframe, union_branches, with_branches
from schemas.envelope import ChangeEvent
from schemas.event_encoder import EventEncoder
from schemas.registry_adapter import ConfluentSchemaRegistry

__all__ = ["run_codec"]

TARGET = Target(Goal.RATIO_AT_LEAST, 0.8)
# Every variant takes its turn on each chunk of this many events, so a swing in the (shared) machine's load
# lands on ours and the baselines alike instead of on whichever ran during it.
CHUNK = 500


async def run_codec(config: BenchConfig, context: BenchContext) -> list[Figure]:
    """Encode, decode and round-trip rates (events/s), ours and fastavro's, `repetitions` times interleaved."""
    names = context.names("codec")
    settings = names.settings(context.settings)
    registry = ConfluentSchemaRegistry(settings.registry_url)
    try:
        encoder = EventEncoder(registry, settings.topic_for, auto_register=True)
        events = Workload(tag=context.tag).events(config.codec_events)
        values = [await encoder.encode(event) for event in events]  # warms the id cache; bodies for decoding
        schema_id = unframe(values[0])[0]
        plan = read_plan(json.loads(await registry.get_schema(schema_id)))
    finally:
        await registry.close()
    schema = default_catalog().schema("task", TASK_VERSION).parsed
    branches = union_branches(schema)
    records = [event.to_avro() for event in events]
    hinted = [with_branches(event.to_avro(), branches) for event in events]
    bodies = [bytes(unframe(value)[1]) for value in values]
    count = len(events)
    samples: dict[str, list[float]] = {}

    def encode_plain(part: slice) -> None:
        for record in records[part]:
            fastavro.schemaless_writer(io.BytesIO(), schema, record)

    def encode_hinted(part: slice) -> None:
        for record in hinted[part]:
            fastavro.schemaless_writer(io.BytesIO(), schema, record)

    def decode_ours(part: slice) -> None:
        for value in values[part]:
            found, body = unframe(value)
            ChangeEvent.from_avro(read_payload_form(body, plan, found))

    def decode_plain(part: slice) -> None:
        for body in bodies[part]:
            fastavro.schemaless_reader(io.BytesIO(body), schema, None)

    def decode_plan_schema(part: slice) -> None:
        for body in bodies[part]:
            fastavro.schemaless_reader(io.BytesIO(body), plan.parsed, None)

    others: dict[str, Callable[[slice], None]] = {
        "encode_plain": encode_plain,
        "encode_hinted": encode_hinted,
        "decode_ours": decode_ours,
        "decode_plain": decode_plain,
        "decode_plan_schema": decode_plan_schema,
    }
    for _ in range(config.repetitions):
        spent = dict.fromkeys(["encode_ours", *others], 0.0)
        for start in range(0, count, CHUNK):
            part = slice(start, start + CHUNK)
            began = time.perf_counter()
            for event in events[part]:
                await encoder.encode(event)  # as the gateway calls it: the id is cached, nothing suspends
            spent["encode_ours"] += time.perf_counter() - began
            for name, work in others.items():
                began = time.perf_counter()
                work(part)
                spent[name] += time.perf_counter() - began
        for name, seconds in spent.items():
            samples.setdefault(name, []).append(count / seconds)

    def round_trip(encode: list[float], decode: list[float]) -> list[float]:
        return [1 / (1 / e + 1 / d) for e, d in zip(encode, decode, strict=True)]

    extra = {"events": count, "payload_bytes": len(json.dumps(events[0].payload)), "value_bytes": len(values[0])}
    return [
        Figure(
            "codec.encode",
            "EventEncoder.encode: ChangeEvent → Confluent-framed Avro",
            "events/s",
            samples["encode_ours"],
            samples["encode_plain"],
            "fastavro.schemaless_writer on the prebuilt to_avro() record",
            target=TARGET,
            extra=extra,
        ),
        Figure(
            "codec.decode",
            "unframe → read plan → ChangeEvent.from_avro (the projector's decode)",
            "events/s",
            samples["decode_ours"],
            samples["decode_plain"],
            "fastavro.schemaless_reader with the registered writer schema",
            target=TARGET,
            extra=extra,
        ),
        Figure(
            "codec.round_trip",
            "encode then decode, ours",
            "events/s",
            round_trip(samples["encode_ours"], samples["decode_ours"]),
            round_trip(samples["encode_plain"], samples["decode_plain"]),
            "fastavro write then read",
            target=TARGET,
            extra=extra,
        ),
        Figure(
            "codec.encode_like_for_like",
            "EventEncoder.encode",
            "events/s",
            samples["encode_ours"],
            samples["encode_hinted"],
            "fastavro.schemaless_writer on the prebuilt, branch-hinted record (what the encoder hands fastavro)",
            notes="what the envelope layer costs over the fastavro call it makes",
        ),
        Figure(
            "codec.decode_like_for_like",
            "the projector's decode",
            "events/s",
            samples["decode_ours"],
            samples["decode_plan_schema"],
            "fastavro.schemaless_reader with the read plan's schema (what the decoder hands fastavro)",
            notes="what the envelope layer costs over the fastavro call it makes",
        ),
    ]
