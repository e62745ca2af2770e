"""Signed, hash-chained pushes against the real gateway and projector: every tampering is refused per op with
its reason, refused seqs keep the chain whole, and the projector's chain head follows the device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest

from producers.wire import HandshakeRequest
from tests.producers.live import ENROLL_SECRET, LiveKeel, eventually, live_keel
from tests.support.services import Services
from tests.support.signed_device import SignedDevice, altered, flipped, wire

pytestmark = pytest.mark.integration


@dataclass
class Pusher:
    """A signed device talking raw HTTP to the gateway."""

    http: httpx.AsyncClient
    device: SignedDevice
    headers: dict[str, str]

    async def push(self, *ops: dict[str, Any], abandoned: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/push", headers=self.headers, json={"ops": list(ops), "abandoned": abandoned or []}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


async def enroll(http: httpx.AsyncClient, device: SignedDevice, *, with_key: bool = True) -> Pusher:
    enrolled = await http.post(
        "/v1/enroll",
        json={
            "tenant_id": device.tenant_id,
            "enrollment_secret": ENROLL_SECRET,
            "device_id": device.device_id,
            "public_key": device.public_key.hex() if with_key else None,
        },
    )
    assert enrolled.status_code == 201, enrolled.text
    request = HandshakeRequest(
        tenant_id=device.tenant_id,
        device_id=device.device_id,
        device_secret=enrolled.json()["device_secret"],
        versions={"task": [2]},
    )
    shaken = (await http.post("/v1/handshake", content=request.model_dump_json())).json()
    return Pusher(http, device, {"authorization": f"Bearer {shaken['token']}"})


@pytest.fixture
async def keel(services: Services) -> AsyncIterator[LiveKeel]:
    async with live_keel(services) as started:
        yield started


@pytest.fixture
async def http(keel: LiveKeel) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keel.url, timeout=20) as client:
        yield client


def only_rejection(answer: dict[str, Any]) -> tuple[int, str, str]:
    [rejection] = answer["rejections"]
    return rejection["seq"], rejection["code"], rejection["reason"]


async def chain_head(keel: LiveKeel, device_id: str) -> int:
    rows = await keel.fetch("SELECT head_seq FROM {schema}.chain_heads WHERE device_id = $1", device_id)
    return int(rows[0]["head_seq"]) if rows else 0


async def test_altered_resigned_reordered_dropped_and_replayed_ops_are_refused(
    keel: LiveKeel, http: httpx.AsyncClient
) -> None:
    pusher = await enroll(http, SignedDevice("tamper-1"))
    device = pusher.device
    first = device.op("t-1", title="genuine")
    assert (await pusher.push(wire(first)))["acked_seq"] == 1

    # A byte flipped in the payload after signing.
    second = device.op("t-2", title="pay the invoice")
    answer = await pusher.push(wire(altered(second, title="pay the attacker")))
    assert only_rejection(answer)[:2] == (2, "bad-hash")
    assert "content does not match its hash" in only_rejection(answer)[2]

    # A byte flipped in the signature.
    third = device.op("t-3", title="three")
    assert third.signature is not None
    answer = await pusher.push(wire(replace(third, signature=flipped(third.signature, 7))))
    assert only_rejection(answer)[:2] == (3, "bad-signature")
    assert "not signed by the device's registered key" in only_rejection(answer)[2]

    # Reordered: two signed ops swap their seqs.
    fourth, fifth = device.op("t-4", title="four"), device.op("t-5", title="five")
    answer = await pusher.push(wire(replace(fifth, device_seq=4)), wire(replace(fourth, device_seq=5)))
    assert [(r["seq"], r["code"]) for r in answer["rejections"]] == [(4, "bad-hash"), (5, "bad-hash")]

    # Chained after something else than the device's previous op (a fork).
    sixth = device.op("t-6", title="six")
    assert (await pusher.push(wire(sixth)))["acked_seq"] == 6
    seventh = device.op("t-7", title="seven", prev=bytes(32))
    answer = await pusher.push(wire(seventh))
    assert only_rejection(answer)[:2] == (7, "broken-chain")
    assert "broken chain: device tamper-1 seq 7 follows 0000000000000000" in only_rejection(answer)[2]

    # Dropped: seq 9 missing, then seq 10 renumbered into the hole.
    eighth, _, tenth = device.op("t-8", title="8"), device.op("t-9", title="9"), device.op("t-10", title="10")
    answer = await pusher.push(wire(eighth), wire(tenth))
    assert (answer["acked_seq"], answer["gap"]) == (8, {"expected": 9, "received": 10})
    answer = await pusher.push(wire(replace(tenth, device_seq=9)))
    assert only_rejection(answer)[:2] == (9, "bad-hash")

    # Replayed: the very same op again is a retry; another op under a consumed seq is a replay.
    again = await pusher.push(wire(first))
    assert (again["duplicates"], again["rejections"]) == ([1], [])
    other = device.event("t-1", 1, title="rewritten history")
    answer = await pusher.push(wire(replace(other, hash=first.hash, signature=first.signature, prev_hash=None)))
    assert only_rejection(answer)[:2] == (1, "replay")
    moved = await pusher.push(wire(replace(first, device_seq=10)))
    assert only_rejection(moved)[:2] == (10, "bad-hash")

    # Unsigned, from a device that registered a key.
    answer = await pusher.push(wire(device.event("t-11", 11, title="unsigned")))
    assert only_rejection(answer)[:2] == (11, "unsigned")

    # After all that, a genuine op is accepted and the projector's chain reaches it: no hole, no refusal.
    device.head = None  # seq 11 was a gap: the gateway checks the signature only
    last = device.op("t-12", seq=12, title="still here")
    assert (await pusher.push(wire(last)))["acked_seq"] == 12

    async def head_reached() -> bool:
        return await chain_head(keel, "tamper-1") == 12

    await eventually(head_reached, "the projector's chain head at seq 12", timeout_s=60)
    kinds = await keel.fetch(
        "SELECT kind, count(*) AS n FROM {schema}.chain_links WHERE device_id = $1 GROUP BY kind", "tamper-1"
    )
    assert {r["kind"]: r["n"] for r in kinds} == {"op": 4, "gap": 8}
    rows = await keel.fetch("SELECT entity_id, title FROM {schema}.task WHERE tenant_id = 'acme' ORDER BY 1")
    assert [(r["entity_id"], r["title"]) for r in rows] == [
        ("t-1", "genuine"),
        ("t-12", "still here"),
        ("t-6", "six"),
        ("t-8", "8"),
    ]


async def test_an_invalid_op_stays_in_the_chain_and_its_link_reaches_the_projector(
    keel: LiveKeel, http: httpx.AsyncClient
) -> None:
    pusher = await enroll(http, SignedDevice("chained-1"))
    device = pusher.device
    ops = [device.op("a", title="one"), device.op("b", title="two", priority=9), device.op("c", title="three")]
    answer = await pusher.push(*map(wire, ops))
    assert answer["acked_seq"] == 3
    assert only_rejection(answer)[:2] == (2, "invalid")
    # An op the device gives up on keeps its signed link too.
    dropped = device.op("d", title="x" * 10)
    kept = device.op("e", title="five")
    abandoned = {
        "seq": 4,
        "event_id": dropped.event_id,
        "reason": "too large",
        "prev_hash": dropped.prev_hash.hex() if dropped.prev_hash else None,
        "hash": dropped.hash.hex() if dropped.hash else None,
        "signature": dropped.signature.hex() if dropped.signature else None,
    }
    assert (await pusher.push(wire(kept), abandoned=[abandoned]))["acked_seq"] == 5

    async def head_reached() -> bool:
        return await chain_head(keel, "chained-1") == 5

    await eventually(head_reached, "the chain head at seq 5", timeout_s=60)
    links = await keel.fetch(
        "SELECT seq, kind, op_hash FROM {schema}.chain_links WHERE device_id = $1 ORDER BY seq", "chained-1"
    )
    assert [(r["seq"], r["kind"]) for r in links] == [(1, "op"), (2, "skipped"), (3, "op"), (4, "skipped"), (5, "op")]
    assert [bytes(r["op_hash"]) for r in links] == [op.hash for op in [*ops, dropped, kept]]
    empty = await http.post("/v1/push", headers=pusher.headers, json={"ops": []})  # answers the head
    assert empty.json()["acked_seq"] == 5


async def test_a_device_without_a_key_pushes_unsigned_and_a_signed_op_from_it_is_refused(
    keel: LiveKeel, http: httpx.AsyncClient
) -> None:
    pusher = await enroll(http, SignedDevice("legacy-1"), with_key=False)
    assert (await pusher.push(wire(pusher.device.event("l-1", 1, title="old app"))))["acked_seq"] == 1
    signed = pusher.device.op("l-2", seq=2, title="signed with an unregistered key")
    assert only_rejection(await pusher.push(wire(signed)))[:2] == (2, "unknown-key")
