"""Fuzzing the decoder of framed Avro records (and the signature check behind it): whatever the bytes and
headers, the answer is an event or a dead letter with a reason — never an exception, never a big allocation.
Bounded here; the long variant runs many more examples (`make test-long`)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.decoder import EventDecoder, Undecodable, entity_of_topic
from consumers.signature_check import SignatureCheck
from keel.event_log import LogRecord
from projections.batch import SourcedEvent
from projections.device_keys import DeviceKey, InMemoryDeviceKeyRegistry
from schemas.catalog import default_catalog
from schemas.domain_migrations import build_registry
from schemas.event_encoder import EventEncoder
from schemas.op_chain import CHAIN_SKIPPED_HEADER
from schemas.registry import InMemorySchemaRegistry
from tests.consumers.helpers import EventFactory
from tests.support.signed_device import SignedDevice

PREFIX = "k"
MAX_PEAK_BYTES = 4 * 2**20  # a decode may allocate a few copies of a record, never more
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FUZZ_LONG = settings(FUZZ, max_examples=5_000)


@dataclass
class Rig:
    """A decoder with a signature check, and valid encoded records to mutate."""

    decoder: EventDecoder
    seeds: list[tuple[str, bytes]]  # (topic, value)


@pytest.fixture
async def rig() -> Rig:
    registry = InMemorySchemaRegistry()
    encoder = EventEncoder(registry, lambda entity: f"{PREFIX}.{entity}.changes", auto_register=True)
    device = SignedDevice("signed", "tenant-a")
    keys = InMemoryDeviceKeyRegistry()
    await keys.register(DeviceKey("tenant-a", "signed", device.public_key))
    factory = EventFactory()
    events = [
        factory.event("dev", "t-1", title="plain", labels=["a", "b"], due_at=1_750_000_000_000),
        factory.event("dev", "p-1", entity_type="project", version=1, name="project"),
        factory.event("dev", "c-1", entity_type="comment", version=1, task_id="t-1", body="hello"),
        device.op("t-2", title="signed"),
    ]
    seeds = [(f"{PREFIX}.{e.entity_type}.changes", await encoder.encode(e)) for e in events]
    decoder = EventDecoder(
        registry,
        build_registry(disabled=()),
        entity_of_topic(PREFIX),
        catalog=default_catalog(),
        signatures=SignatureCheck(keys),
    )
    return Rig(decoder, seeds)


Edit = tuple[str, int, int | bytes]
HUGE_LENGTHS = [b"\xfe\xff\xff\xff\x0f", b"\x81\x80\x80\x80\x80\x80\x80\x80\x80\x01"]  # zig-zag varints


@st.composite
def mutated(draw: st.DrawFn, seeds: int = 4) -> tuple[int, list[Edit]]:
    """A seed record and edits: bit flips, cuts, insertions, or an absurd length prefix spliced in."""
    index = draw(st.integers(0, seeds - 1))
    position = st.integers(0, 10_000)
    edit: st.SearchStrategy[Edit] = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("cut"), position, st.just(0)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=12)),
        st.tuples(st.just("insert"), position, st.sampled_from(HUGE_LENGTHS)),
    )
    return index, draw(st.lists(edit, min_size=1, max_size=4))


def apply(value: bytes, edits: list[Edit]) -> bytes:
    data = bytearray(value)
    for kind, position, argument in edits:
        at = position % (len(data) + 1)
        if kind == "flip" and data and isinstance(argument, int):
            data[at % len(data)] ^= argument
        elif kind == "cut":
            del data[at:]
        elif kind == "insert" and isinstance(argument, bytes):
            data[at:at] = argument
    return bytes(data)


def record(topic: str, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> LogRecord:
    return LogRecord(topic, 0, 0, b"key", value, headers, 0)


@pytest.fixture
def memory() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


async def decode_within_bounds(rig: Rig, value: LogRecord) -> SourcedEvent | Undecodable:
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    result = await rig.decoder.decode(value)
    _, peak = tracemalloc.get_traced_memory()
    assert isinstance(result, SourcedEvent | Undecodable), result
    assert peak - before < MAX_PEAK_BYTES, f"decoding {len(value.value or b'')} bytes allocated {peak - before}"
    return result


@FUZZ
@given(case=mutated(), header=st.one_of(st.none(), st.binary(max_size=200)))
async def test_mutated_records_decode_or_dead_letter_with_a_reason(
    rig: Rig, memory: None, case: tuple[int, list[Edit]], header: bytes | None
) -> None:
    topic, value = rig.seeds[case[0]]
    headers = ((CHAIN_SKIPPED_HEADER, header),) if header is not None else ()
    result = await decode_within_bounds(rig, record(topic, apply(value, case[1]), headers))
    if isinstance(result, Undecodable):
        assert str(result.error)


@FUZZ
@given(schema=st.integers(0, 2**32 - 1), body=st.binary(max_size=400), topic=st.sampled_from(["k.task.changes", "x"]))
async def test_random_bodies_under_any_schema_id_are_dead_letters_not_crashes(
    rig: Rig, memory: None, schema: int, body: bytes, topic: str
) -> None:
    framed = b"\x00" + schema.to_bytes(4, "big") + body
    for value in (framed, body, None):
        await decode_within_bounds(rig, record(topic, value))


@pytest.mark.long
@FUZZ_LONG
@given(case=mutated(), header=st.one_of(st.none(), st.binary(max_size=200)))
async def test_mutated_records_long(rig: Rig, memory: None, case: tuple[int, list[Edit]], header: bytes | None) -> None:
    topic, value = rig.seeds[case[0]]
    headers = ((CHAIN_SKIPPED_HEADER, header),) if header is not None else ()
    await decode_within_bounds(rig, record(topic, apply(value, case[1]), headers))
