"""Stage `produce`: ops acknowledged per second by the gateway's push path vs. raw Kafka producers.

Ours, in process: `Gateway.push.push` — the real `PushService` on the real adapters (PostgreSQL push ledger
with its advisory lock, device keys, the registry-backed encoder, the idempotent acks=all `AioKafkaLogWriter`)
— driven by `devices` concurrent device streams, each pushing batches of `push_batch` ops parsed from the
JSON body the SDK sends. Ours, over HTTP: the same through `keel run gateway` (uvicorn, auth, body limits) in
its own process, driven by the SDK-enrolled devices posting prepared bodies. Ours, signed: in process, ops
sealed like the SDK seals them (the gateway verifies hash, signature and chain of each).

Baseline: aiokafka sending the very records the gateway produced (pre-encoded, same headers), in the same
shape — one sender per device, each awaiting all acks of a batch before the next — with the writer's settings
(acks=all, idempotence, linger 5 ms). confluent-kafka's `Producer` sends the same records alongside.
"""

from __future__ import annotations

import asyncio
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.bench.config import BenchConfig
from deploy.bench.context import BenchContext
from deploy.bench.figures import Figure, Goal, Target
from deploy.bench.http_devices import HttpPusher, enroll
from deploy.bench.profiling import profiled
from deploy.bench.raw_kafka import aiokafka_send_rate, confluent_send_rate
from deploy.bench.services import ENROLLMENT_SECRET, gateway_process
from deploy.bench.workload import DeviceStream, Workload, push_body
from keel.event_log import OutgoingRecord
from producers.gateway.gateway import Gateway
from producers.gateway.service import open_gateway
from producers.gateway.tokens import DeviceClaims
from producers.wire import PushRequest
from projections.device_keys import DeviceKey
from schemas.envelope import ChangeEvent, TraceHeaders
from schemas.op_chain import public_key_bytes

__all__ = ["run_produce"]

TARGET = Target(Goal.RATIO_AT_LEAST, 0.6)
FAR_FUTURE_MS = 2**62


def _plan(streams: list[DeviceStream], per_device: int, batch: int) -> dict[str, list[list[ChangeEvent]]]:
    """Each device's pushes: `per_device` ops in batches of `batch`."""
    return {
        stream.device_id: [stream.take(min(batch, per_device - done)) for done in range(0, per_device, batch)]
        for stream in streams
    }


async def _push_in_process(
    gateway: Gateway, streams: list[DeviceStream], plan: dict[str, list[list[ChangeEvent]]], *, sampled: bool = True
) -> float:
    """Ops/s through `PushService.push`, every device pushing its batches in turn, all devices at once."""
    bodies = {device: [push_body(batch, sampled=sampled) for batch in batches] for device, batches in plan.items()}
    claims = {s.device_id: DeviceClaims(s.tenant_id, s.device_id, {"task": 2}, FAR_FUTURE_MS) for s in streams}

    async def device(device_id: str) -> None:
        for body, batch in zip(bodies[device_id], plan[device_id], strict=True):
            answer = await gateway.push.push(claims[device_id], PushRequest.model_validate_json(body))
            if answer.acked_seq < batch[-1].device_seq or answer.rejections:
                first = answer.rejections[0] if answer.rejections else None
                raise RuntimeError(f"push of {device_id} acknowledged to {answer.acked_seq}; first refusal: {first}")

    count = sum(len(batch) for batches in plan.values() for batch in batches)
    began = time.perf_counter()
    await asyncio.gather(*(device(device_id) for device_id in plan))
    return count / (time.perf_counter() - began)


async def _push_http(url: str, streams: list[DeviceStream], plan: dict[str, list[list[ChangeEvent]]]) -> float:
    """Ops/s through `POST /v1/push` of a gateway process, devices pushing concurrently over keep-alive."""
    tokens = await enroll(url, streams)
    bodies = {device: [push_body(batch) for batch in batches] for device, batches in plan.items()}
    pusher = HttpPusher(url, tokens, connections=len(streams))
    try:

        async def device(device_id: str) -> None:
            for body, batch in zip(bodies[device_id], plan[device_id], strict=True):
                await pusher.push(device_id, body, batch[-1].device_seq)

        count = sum(len(batch) for batches in plan.values() for batch in batches)
        began = time.perf_counter()
        await asyncio.gather(*(device(device_id) for device_id in plan))
        return count / (time.perf_counter() - began)
    finally:
        await pusher.aclose()


async def _records(gateway: Gateway, plan: dict[str, list[list[ChangeEvent]]]) -> list[list[list[OutgoingRecord]]]:
    """The records the gateway produces for `plan` (encoded with its encoder, with the headers it sets)."""
    accepted = TraceHeaders({TraceHeaders.ACCEPTED_AT_MS: str(int(time.time() * 1000)).encode()})
    return [
        [[await gateway.encoder.record(event, accepted) for event in batch] for batch in batches]
        for batches in plan.values()
    ]


async def run_produce(config: BenchConfig, context: BenchContext) -> list[Figure]:
    """Per repetition, interleaved: gateway in process, signed, aiokafka, confluent-kafka, gateway over HTTP."""
    names = context.names("produce")
    settings = names.settings(context.settings, gateway_enrollment_secret=ENROLLMENT_SECRET)
    per_device = max(1, config.produce_ops // config.produce_devices)
    samples: dict[str, list[float]] = {}
    gateway = await open_gateway(settings)
    await gateway.start()
    server, url = gateway_process(settings, context.log_dir)
    try:
        await server.start()
        for repetition in range(config.repetitions):

            def workload(kind: str, rep: int = repetition) -> Workload:
                return Workload(devices=config.produce_devices, tag=f"{context.tag}-{kind}{rep}")

            streams = workload("inproc").streams()
            plan = _plan(streams, per_device, config.push_batch)
            samples.setdefault("gateway_in_process", []).append(await _push_in_process(gateway, streams, plan))

            unsampled = workload("unsampled").streams()
            samples.setdefault("gateway_unsampled", []).append(
                await _push_in_process(
                    gateway, unsampled, _plan(unsampled, per_device, config.push_batch), sampled=False
                )
            )

            signed = workload("signed").streams()
            for stream in signed:
                stream.signing_key = Ed25519PrivateKey.generate()
                key = DeviceKey(stream.tenant_id, stream.device_id, public_key_bytes(stream.signing_key))
                await gateway.device_keys.register(key)
            signed_plan = _plan(signed, per_device, config.push_batch)
            samples.setdefault("gateway_signed", []).append(await _push_in_process(gateway, signed, signed_plan))

            raw_plan = _plan(workload("raw").streams(), per_device, config.push_batch)
            records = await _records(gateway, raw_plan)
            samples.setdefault("aiokafka", []).append(await aiokafka_send_rate(settings, records))
            flat = [record for stream in records for chunk in stream for record in chunk]
            samples.setdefault("confluent", []).append(await confluent_send_rate(settings, flat))

            http_streams = workload("http").streams()
            http_plan = _plan(http_streams, per_device, config.push_batch)
            samples.setdefault("gateway_http", []).append(await _push_http(url, http_streams, http_plan))
        if config.profile:
            streams = Workload(devices=config.produce_devices, tag=f"{context.tag}-profiled").streams()
            with profiled(context.profiles, "produce (PushService.push in process)"):
                await _push_in_process(gateway, streams, _plan(streams, per_device, config.push_batch))
    finally:
        await server.stop()
        await gateway.stop()
    baseline = samples["aiokafka"]
    what = "raw aiokafka (acks=all, idempotent) sending the same pre-encoded records, same concurrency"
    extra = {
        "devices": config.produce_devices,
        "ops_per_push": config.push_batch,
        "ops": per_device * config.produce_devices,
    }
    return [
        Figure(
            "produce.gateway_in_process",
            "PushService.push in process (parse, validate, encode, ledger, produce, ack)",
            "ops/s",
            samples["gateway_in_process"],
            baseline,
            what,
            target=TARGET,
            extra=extra,
        ),
        Figure(
            "produce.gateway_http",
            "POST /v1/push to `keel run gateway` (its own process)",
            "ops/s",
            samples["gateway_http"],
            baseline,
            what,
            target=TARGET,
            extra=extra,
        ),
        Figure(
            "produce.gateway_unsampled_in_process",
            "PushService.push in process, the ops' traces not sampled (devices at KEEL_OTEL_SAMPLE_RATIO=0)",
            "ops/s",
            samples["gateway_unsampled"],
            baseline,
            what,
            notes="what recording a produce span per op costs: compare with produce.gateway_in_process",
            extra=extra,
        ),
        Figure(
            "produce.gateway_signed_in_process",
            "PushService.push in process, ops signed (hash, Ed25519, chain checked per op)",
            "ops/s",
            samples["gateway_signed"],
            baseline,
            what,
            extra=extra,
        ),
        Figure(
            "produce.confluent_kafka",
            "confluent-kafka Producer (acks=all, idempotent, linger 5 ms) sending the same records",
            "ops/s",
            samples["confluent"],
            baseline,
            what,
            notes="reported alongside: a C client with its own I/O threads",
            extra=extra,
        ),
    ]
