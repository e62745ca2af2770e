"""One op's trace, end to end on the real services: capture → push → produce → project → deliver → apply.

The gateway and the projector run in this process (their own code paths on the real Kafka and PostgreSQL),
so the SDK's in-memory exporter sees every span of the op's journey.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from keel.telemetry import capture_spans, trace_id_of
from tests.producers.live import live_keel
from tests.support.services import Services

pytestmark = pytest.mark.integration


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _links(span: ReadableSpan) -> set[int]:
    return {link.context.span_id for link in span.links}


def _one(spans: list[ReadableSpan], name: str, **attributes: object) -> ReadableSpan:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, f"{name} {attributes}: {len(found)} spans"
    return found[0]


async def _wait_for(check: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting for the op's spans"
        await asyncio.sleep(0.1)


async def test_one_op_is_traced_from_capture_to_its_delivery_to_another_device(
    services: Services, tmp_path: Path
) -> None:
    with capture_spans() as exporter:
        async with live_keel(services) as keel:
            alice = await keel.device(tmp_path / "alice.db")
            bob = await keel.device(tmp_path / "bob.db")
            await bob.start()
            await bob.wait_synced(30)
            event = alice.upsert("task", "traced-1", {"title": "follow me"})
            with alice.replica.store.transaction() as tx:
                (logged,) = tx.ops_for_entity("task", "traced-1")
            assert logged.trace is not None, "the capture's traceparent is stored with the op"
            trace_id = int(trace_id_of(logged.trace) or "0", 16)
            await alice.start()

            def delivered() -> bool:
                return any(
                    s.name == "keel.device.apply" and s.attributes.get("keel.device") == bob.device_id and s.links
                    for s in exporter.get_finished_spans()
                    if any(link.context.trace_id == trace_id for link in s.links)
                )

            await _wait_for(delivered)
            assert (bob.get("task", "traced-1") or {}).get("title") == "follow me"
            stored = await keel.fetch("SELECT trace FROM {schema}.outbox WHERE event_id = $1", event.event_id)

        spans = list(exporter.get_finished_spans())
    by_id = {_span_id(s): s for s in spans}
    in_trace = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]

    # The op's own trace: capture → the gateway's produce → the projector's apply, parent to child.
    capture = _one(in_trace, "keel.device.capture", **{"keel.event_id": event.event_id})
    assert capture.parent is None
    produce = _one(in_trace, "keel.gateway.produce", **{"keel.event_id": event.event_id})
    assert produce.kind is SpanKind.PRODUCER
    assert produce.parent is not None
    assert produce.parent.span_id == _span_id(capture)
    apply = _one(in_trace, "keel.projector.apply", **{"keel.event_id": event.event_id})
    assert apply.kind is SpanKind.CONSUMER
    assert apply.parent is not None
    assert apply.parent.span_id == _span_id(produce)
    assert {s.name for s in in_trace} == {"keel.device.capture", "keel.gateway.produce", "keel.projector.apply"}

    # The push that carried it: the device's push span links the capture; the gateway's push span is its child
    # and links the capture too; the produce span links back to the gateway's push.
    gateway_push = by_id[next(iter(_links(produce)))]
    assert gateway_push.name == "keel.gateway.push"
    assert _span_id(capture) in _links(gateway_push)
    assert gateway_push.parent is not None
    device_push = by_id[gateway_push.parent.span_id]
    assert device_push.name == "keel.device.push"
    assert _span_id(capture) in _links(device_push)

    # The projector's batch links every record it held (ours among them) and holds the commit span.
    batch = by_id[next(iter(_links(apply)))]
    assert batch.name == "keel.projector.batch"
    assert _span_id(produce) in _links(batch)
    commits = [
        s for s in spans if s.name == "keel.projector.commit" and s.parent and s.parent.span_id == _span_id(batch)
    ]
    assert len(commits) == 1

    # The outbox row keeps the apply span's context; bob's pull and apply link to it.
    assert stored[0]["trace"].startswith(f"00-{trace_id:032x}-{_span_id(apply):016x}-")
    pulls = [
        s
        for s in spans
        if s.name == "keel.gateway.pull"
        and s.attributes.get("keel.device") == bob.device_id
        and _span_id(apply) in _links(s)
    ]
    assert len(pulls) == 1
    device_pull = by_id[pulls[0].parent.span_id] if pulls[0].parent else None
    assert device_pull is not None
    assert device_pull.name == "keel.device.pull"
    device_apply = _one(
        [s for s in spans if s.parent is not None and s.parent.span_id == _span_id(device_pull)], "keel.device.apply"
    )
    assert _span_id(apply) in _links(device_apply)
    assert device_apply.attributes.get("keel.device") == bob.device_id
