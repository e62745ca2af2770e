"""Signed, chained ops: canonical bytes survive both hops for every catalog version, and each check names
what it caught."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.errors import IntegrityError
from producers.wire import WireEvent
from schemas.catalog import default_catalog
from schemas.codec import decode_body, encode_body, to_payload_form
from schemas.envelope import ChangeEvent
from schemas.op_chain import (
    OpLink,
    check_link,
    links_from_header,
    links_to_header,
    raise_if_forged,
    raise_if_not_canonical,
    raise_if_unchained,
    seal,
)
from tests.schemas.strategies import change_events, every_version
from tests.support.signed_device import SignedDevice

CATALOG = default_catalog()
KEY = Ed25519PrivateKey.generate()


@pytest.mark.parametrize(("entity", "version"), every_version(CATALOG))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_canonical_bytes_survive_the_json_and_the_avro_hop(entity: str, version: int, data: st.DataObject) -> None:
    sealed = seal(data.draw(change_events(CATALOG, entity, version)), KEY, bytes(32))
    over_json = WireEvent.model_validate_json(WireEvent.of(sealed).model_dump_json()).to_event()
    assert over_json.canonical_bytes() == sealed.canonical_bytes()
    schema = CATALOG.schema(entity, version)
    body = encode_body(over_json.to_avro(), schema.parsed)
    over_avro = ChangeEvent.from_avro(to_payload_form(decode_body(body, schema.parsed)))
    assert over_avro.canonical_bytes() == sealed.canonical_bytes()
    raise_if_forged(over_avro, KEY.public_key())
    raise_if_not_canonical(over_json, body, schema.parsed)


def sealed_task(seq: int = 1, prev: bytes | None = None, **payload: object) -> ChangeEvent:
    return seal(SignedDevice("d-1").event("t-1", seq, **payload), KEY, prev)


def test_each_check_names_what_it_caught() -> None:
    first = sealed_task(title="one")
    assert first.signature is not None
    raise_if_forged(first, KEY.public_key())
    cases = {
        "content does not match its hash": replace(first, payload={**(first.payload or {}), "title": "two"}),
        "bad signature": replace(first, signature=bytes(64)),
        "unsigned op": replace(first, signature=None),
    }
    for words, forged in cases.items():
        with pytest.raises(IntegrityError, match=words):
            raise_if_forged(forged, KEY.public_key())
    with pytest.raises(IntegrityError, match="bad signature"):
        raise_if_forged(first, Ed25519PrivateKey.generate().public_key())
    second = sealed_task(2, first.hash, title="two")
    raise_if_unchained(OpLink.of(second), OpLink.of(first))
    with pytest.raises(IntegrityError, match="broken chain: device d-1 seq 2 follows"):
        raise_if_unchained(OpLink.of(sealed_task(2, bytes(32))), OpLink.of(first))
    with pytest.raises(IntegrityError, match="seq 1 names a predecessor"):
        raise_if_unchained(OpLink.of(sealed_task(1, bytes(32))), None)
    raise_if_unchained(OpLink.of(sealed_task(3, bytes(32))), OpLink("d-1", 2, None, None))  # after a gap: no check


def test_a_link_verifies_without_the_content_and_travels_in_a_header() -> None:
    op = sealed_task(4, bytes(32), title="x")
    link = OpLink.of(op)
    check_link(link, KEY.public_key())
    [back, gap] = links_from_header("d-1", links_to_header([link, OpLink("d-1", 5, None, None)]))
    assert back == link
    assert gap.is_gap
    with pytest.raises(IntegrityError, match="bad signature"):
        check_link(replace(link, seq=5), KEY.public_key())
    for junk in (b"{", b'[{"seq": "x"}]', b'[{"seq": 1, "hash": "zz"}]', b"[1]"):
        with pytest.raises(IntegrityError, match=r"keel-chain-skipped|malformed chain link"):
            links_from_header("d-1", junk)


def test_an_op_that_avro_would_change_is_not_canonical() -> None:
    partial = sealed_task(title="only the title")
    partial = seal(replace(partial, payload={"title": "only the title"}), KEY, None)
    schema = CATALOG.schema("task", 2)
    body = encode_body(partial.to_avro(), schema.parsed)
    with pytest.raises(IntegrityError, match=r"not in canonical form.*fields missing from the payload: description"):
        raise_if_not_canonical(partial, body, schema.parsed)
