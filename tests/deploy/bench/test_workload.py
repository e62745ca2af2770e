"""The bench's load is what devices really send: valid ops, the SDK's wire form, signed chains that verify."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.bench.workload import LARGE_VERSION, DeviceStream, Workload, push_body, task_payload, wire_ops
from producers.wire import PushRequest, WireEvent
from schemas.op_chain import raise_if_forged
from schemas.validation import validate_event


@pytest.mark.parametrize(("size", "version"), [(100, 2), (1_000, 2), (8_000, 2), (10_000, 3), (100_000, 3)])
def test_payloads_have_about_the_size_asked_and_stay_valid(size: int, version: int) -> None:
    stream = DeviceStream("acme", "d-1", entities=5, payload_bytes=size, seed=1, version=version)
    event = stream.next_event()
    validate_event(event)
    assert abs(len(json.dumps(event.payload)) - size) <= max(50, size // 100)


def test_v2_payloads_cannot_grow_past_its_text_limits() -> None:
    with pytest.raises(ValueError, match="v3"):
        task_payload(1, 50_000, version=2)


def test_wire_ops_are_the_sdks_wire_form_and_bodies_parse_as_push_requests() -> None:
    events = Workload(devices=3, version=LARGE_VERSION).events(9)
    assert wire_ops(events) == [WireEvent.of(event).model_dump(mode="json") for event in events]
    request = PushRequest.model_validate_json(push_body(events[:3]))
    assert [WireEvent.model_validate(op).to_event() for op in request.ops] == events[:3]
    assert set(request.traces) == {event.device_seq for event in events[:3]}
    assert all(trace.endswith("-01") for trace in request.traces.values())
    unsampled = PushRequest.model_validate_json(push_body(events[:3], sampled=False))
    assert all(trace.endswith("-00") for trace in unsampled.traces.values())


def test_streams_count_seqs_from_one_and_signed_ones_chain_and_verify() -> None:
    key = Ed25519PrivateKey.generate()
    stream = DeviceStream("acme", "d-1", entities=5, payload_bytes=160, seed=1, signing_key=key)
    first, second = stream.take(2)
    assert (first.device_seq, second.device_seq) == (1, 2)
    assert first.prev_hash is None
    assert second.prev_hash == first.hash
    for event in (first, second):
        raise_if_forged(event, key.public_key())


def test_workloads_are_the_same_for_the_same_seed() -> None:
    assert [e.event_id for e in Workload(seed=3).events(5)] == [e.event_id for e in Workload(seed=3).events(5)]
