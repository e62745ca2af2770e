"""Keel on its in-memory fakes, with every fault a step can inject: the world R9's state machine drives.

The real code runs — SDK devices (`producers.device.Device` over `InMemoryDeviceStore`), the gateway
(`producers.gateway` on `InMemoryPushLedger`, `InMemoryDeviceDirectory`, the registry fake) served through
ASGI, the log (`keel.event_log.InMemoryLog`), the projector's decoder and the projection store fake
(`InMemoryProjectionStore`) — with only the projector's loop reduced to its essence: read each partition
from the stored offset, decode, `apply_batch` (compare-and-set offsets, dedup), or crash before committing.

Faults a step can inject: a push whose response is lost after the gateway committed; a gateway failing
right after the broker's ack (before its ledger commit) or right after its ledger commit (before
answering) — its failpoints with the `unavailable` action; the log unreachable; a record appended twice
(a producer retry); a projector crash before its commit; a device restarted from its store.

`violations` lists what must hold after every step; `drain` then `converged_report` what must hold once
everything has been pushed, projected and pulled (deploy/verification/checker.py judges both).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from consumers.decoder import EventDecoder, Undecodable, entity_of_topic
from consumers.signature_check import SignatureCheck
from deploy.verification.checker import (
    AppliedOp,
    CheckReport,
    DeviceDigest,
    Evidence,
    FindingKind,
    LogEntry,
    check,
    op_fingerprint,
)
from deploy.verification.evidence import device_evidence
from deploy.verification.replay import digests_in_versions, replay
from keel.errors import KeelError
from keel.event_log import InMemoryLog, InMemoryLogWriter, OutgoingRecord
from keel.settings import Settings
from producers.device import Device, SyncConfig
from producers.device.store import InMemoryDeviceStore, OpStatus
from producers.gateway.app import build_app
from producers.gateway.devices import InMemoryDeviceDirectory
from producers.gateway.gateway import Gateway, GatewayPorts
from producers.gateway.push_ledger import InMemoryPushLedger
from producers.gateway.tokens import TokenAuthority
from projections.batch import OffsetAdvance, ProjectionBatch, SourcedEvent, TopicPartition
from projections.device_keys import InMemoryDeviceKeyRegistry
from projections.outbox import OutboxKind
from projections.store import InMemoryProjectionStore
from schemas.catalog import default_catalog
from schemas.domain_migrations import default_registry
from schemas.registry import InMemorySchemaRegistry

__all__ = ["ENROLLMENT_SECRET", "GATEWAY_MODES", "MID_RUN_KINDS", "ModelStats", "ModelWorld", "written"]

GATEWAY_URL = "http://gateway.model"
ENROLLMENT_SECRET = "model-enrollment-secret"  # noqa: S105 - an in-memory gateway of the model, nothing real
VERSIONS = {"task": [1, 2], "project": [1], "comment": [1]}
GROUP = "model"
GATEWAY_MODES = ("normal", "before-produce", "after-produce", "after-commit")
# Must never appear, whatever the step: an acknowledged op missing from the log or replaced by another event,
# an op applied twice, a device's seqs going backwards within a partition.
MID_RUN_KINDS = (FindingKind.MISSING_FROM_LOG, FindingKind.ALTERED, FindingKind.DUPLICATED, FindingKind.SEQ_INVERSION)
QUICK_SYNC = SyncConfig(
    long_poll_s=0.01,
    idle_recheck_s=0.05,
    digest_interval_s=None,
    backoff_base_s=0.01,
    backoff_cap_s=0.02,
    use_stream=False,
    request_timeout_s=5.0,
)


class _Network(httpx.AsyncBaseTransport):
    """Routes requests to the current gateway; can lose the answer of the next push after the gateway committed."""

    def __init__(self, apps: dict[str, httpx.ASGITransport]) -> None:
        self.apps = apps
        self.mode = "normal"
        self.lose_next_push_answer = False
        self.answers_lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Serve from the current gateway's app."""
        response = await self.apps[self.mode].handle_async_request(request)
        if self.lose_next_push_answer and request.url.path == "/v1/push":
            self.lose_next_push_answer = False
            await response.aread()
            await response.aclose()
            self.answers_lost += 1
            raise httpx.ReadError("the answer was lost on the way back (model)", request=request)
        return response

    async def aclose(self) -> None:
        """Devices share this network: closing one device's client must not close it."""

    async def shut(self) -> None:
        """Close every app transport (the end of the world)."""
        for app in self.apps.values():
            await app.aclose()


@dataclass
class ModelStats:
    """Counters over every example of a run."""

    examples: int = 0
    steps: int = 0
    ops_written: int = 0
    pushes: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    drains: int = 0
    ops_held: int = 0  # ops devices held at the end of their programs (all statuses)
    log_records: int = 0
    redeliveries: int = 0

    def fault(self, name: str) -> None:
        """Count one injected fault."""
        self.faults[name] = self.faults.get(name, 0) + 1


class ModelWorld:
    """One instance of Keel on fakes (see the module docstring)."""

    def __init__(self, settings: Settings, stats: ModelStats) -> None:
        self.settings = settings
        self.stats = stats
        self.log = InMemoryLog()
        for entity in default_catalog().entities():
            self.log.create_topic(settings.topic_for(entity), partitions=2)
        self.registry = InMemorySchemaRegistry("FULL_TRANSITIVE")
        self.store = InMemoryProjectionStore()
        device_keys = InMemoryDeviceKeyRegistry()
        ports = GatewayPorts(
            directory=InMemoryDeviceDirectory(),
            ledger=InMemoryPushLedger(),
            writer=InMemoryLogWriter(self.log),
            registry=self.registry,
            outbox=self.store.outbox,
            states=self.store,
            device_keys=device_keys,
        )
        tokens = TokenAuthority.generate(ttl_s=900)
        self.gateways = {
            mode: Gateway(
                ports,
                settings.model_copy(update={"gateway_failpoints": "" if mode == "normal" else f"{mode}=unavailable"}),
                tokens=tokens,
            )
            for mode in GATEWAY_MODES
        }
        self.network = _Network(
            {mode: httpx.ASGITransport(app=build_app(g, manage_lifecycle=False)) for mode, g in self.gateways.items()}
        )
        self.decoder = EventDecoder(
            self.registry,
            default_registry(),
            entity_of_topic(settings.topic_prefix),
            signatures=SignatureCheck(device_keys),
        )
        self.devices: list[Device] = []
        self._backings: list[InMemoryDeviceStore] = []
        self._decoded: dict[tuple[str, int, int], SourcedEvent | Undecodable] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self, devices: int) -> None:
        """Start the gateways and enroll `devices` devices of one tenant."""
        for gateway in self.gateways.values():
            await gateway.start()
        for _ in range(devices):
            store = InMemoryDeviceStore()
            device = await Device.enroll(
                store,
                GATEWAY_URL,
                tenant_id="acme",
                enrollment_secret=ENROLLMENT_SECRET,
                versions=VERSIONS,
                config=QUICK_SYNC,
                transport=self.network,
            )
            self._backings.append(store)
            self.devices.append(device)

    async def close(self) -> None:
        """Close devices and gateways."""
        for device in self.devices:
            with contextlib.suppress(KeelError):
                await device.close()
        for gateway in self.gateways.values():
            await gateway.stop()
        await self.network.shut()

    # ------------------------------------------------------------ steps

    async def push(self, index: int, fault: str) -> None:
        """One explicit sync of a device, with `fault` injected (none, answer-lost, after-produce, …)."""
        device = self.devices[index]
        if not device.replica.count(OpStatus.PENDING):
            return
        self.stats.pushes += 1
        if fault != "none":
            self.stats.fault(fault)
        self.network.mode = fault if fault in GATEWAY_MODES else "normal"
        self.network.lose_next_push_answer = fault == "answer-lost"
        self.log.available = fault != "log-down"
        try:
            await device.sync()
        except KeelError:
            pass  # the device keeps its ops pending and retries later: what a real one does
        finally:
            self.network.mode = "normal"
            self.network.lose_next_push_answer = False
            self.log.available = True

    async def pull(self, index: int) -> None:
        """A device pulls (and pushes whatever is pending) with no fault."""
        with contextlib.suppress(KeelError):
            await self.devices[index].sync()

    async def pull_only(self, index: int) -> None:
        """A device pulls the feed without pushing (no fault)."""
        with contextlib.suppress(KeelError):
            await self.devices[index].sync_loop.pull_all()

    def redeliver(self, pick: int) -> None:
        """Append a copy of an existing record (a producer retry after a lost ack)."""
        records = [r for partitions in self.log.topics.values() for rs in partitions for r in rs]
        if not records:
            return
        chosen = records[pick % len(records)]
        self.log.append(OutgoingRecord(chosen.topic, chosen.key, chosen.value, chosen.headers))
        self.stats.fault("redelivery")

    async def restart_device(self, index: int) -> None:
        """Close a device and open it again from its store (an app restart)."""
        device = self.devices[index]
        await device.close()
        store = self._backings[index]
        reopened = InMemoryDeviceStore(store.backing)
        self._backings[index] = reopened
        self.devices[index] = Device.open(
            reopened, GATEWAY_URL, versions=VERSIONS, config=QUICK_SYNC, transport=self.network
        )
        self.stats.fault("device-restart")

    async def _decode(self, topic: str, partition: int, offset: int) -> SourcedEvent | Undecodable:
        key = (topic, partition, offset)
        if key not in self._decoded:
            self._decoded[key] = await self.decoder.decode(self.log.topics[topic][partition][offset])
        return self._decoded[key]

    async def project(self, max_records: int, *, crash_before_commit: bool = False) -> int:
        """One projector pass over every partition from the stored offsets; events applied."""
        applied = 0
        for topic, partitions in sorted(self.log.topics.items()):
            for partition, records in enumerate(partitions):
                tp = TopicPartition(topic, partition)
                stored = (await self.store.load_offsets(GROUP, [tp])).get(tp)
                start = stored or 0
                end = min(len(records), start + max_records)
                if end <= start:
                    continue
                decoded = [await self._decode(topic, partition, offset) for offset in range(start, end)]
                if crash_before_commit:
                    self.stats.fault("projector-crash")
                    return applied  # nothing committed: the next pass starts from the stored offsets again
                events = tuple(d for d in decoded if isinstance(d, SourcedEvent))
                outcome = await self.store.apply_batch(
                    ProjectionBatch(GROUP, (OffsetAdvance(tp, stored, end),), events)
                )
                if not outcome.committed:
                    raise AssertionError(f"the model's batch was refused: {outcome}")
                applied += outcome.applied
        return applied

    # ------------------------------------------------------------ judging

    async def _log_entries(self) -> tuple[list[LogEntry], list[SourcedEvent], int]:
        entries: list[LogEntry] = []
        events: list[SourcedEvent] = []
        undecodable = 0
        for topic, partitions in sorted(self.log.topics.items()):
            for partition, records in enumerate(partitions):
                for offset in range(len(records)):
                    decoded = await self._decode(topic, partition, offset)
                    if isinstance(decoded, Undecodable):
                        undecodable += 1
                        continue
                    event = decoded.event
                    events.append(decoded)
                    entries.append(
                        LogEntry(
                            event.device_id,
                            event.device_seq,
                            event.event_id,
                            op_fingerprint(event),
                            topic,
                            partition,
                            offset,
                        )
                    )
        return entries, events, undecodable

    async def report(self, *, drained: bool) -> CheckReport:
        """The checker's verdict now (digests compared only when `drained`)."""
        devices = [device_evidence(d) for d in self.devices]
        entries, events, _ = await self._log_entries()
        applied = [AppliedOp(device, seq, event_id) for (device, seq), event_id in self.store.applied.items()]
        feed = [row.entry.event_id or "" for row in self.store.outbox.rows if row.entry.kind is OutboxKind.CHANGE]
        digests: list[DeviceDigest] = []
        projected: dict[tuple[str, str, int], str] = {}
        replayed: dict[tuple[str, str, int], str] | None = None
        if drained:
            digests = [digest for d in devices for digest in d.digests]
            versions: dict[str, set[int]] = {}
            for digest in digests:
                versions.setdefault(digest.entity_type, set()).add(digest.version)
            migrations = default_registry()
            rows = {entity: await self.store.visible_rows(entity) for entity in versions}
            projected = digests_in_versions(rows, versions, migrations)
            clean = replay(events)
            replayed = digests_in_versions({e: clean.visible_rows(e) for e in versions}, versions, migrations)
        return check(
            Evidence(
                acknowledged=[op for d in devices for op in d.acknowledged],
                applied=applied,
                consumed_without_event={d.device_id: d.quarantined for d in devices},
                feed_event_ids=feed,
                log=entries,
                device_digests=digests,
                projection_digests=projected,
                replay_digests=replayed,
            )
        )

    async def violations(self) -> list[str]:
        """What must hold after every step and does not (empty when all is well)."""
        report = await self.report(drained=False)
        problems = [f"{f.kind.value}: {f.subject}: {f.detail}" for f in report.findings if f.kind in MID_RUN_KINDS]
        # Everything below a partition's stored offset is applied: the offset never moves past an op.
        for topic, partitions in self.log.topics.items():
            for partition in range(len(partitions)):
                tp = TopicPartition(topic, partition)
                stored = (await self.store.load_offsets(GROUP, [tp])).get(tp, 0)
                for offset in range(stored):
                    decoded = await self._decode(topic, partition, offset)
                    if isinstance(decoded, SourcedEvent) and decoded.event.dedup_key not in self.store.applied:
                        problems.append(f"{topic}[{partition}]@{offset} is below the stored offset but not applied")
        return problems

    async def drain(self, rounds: int = 6) -> list[str]:
        """Push, project and pull until nothing moves (no faults); devices still holding pending ops."""
        self.stats.drains += 1
        for _ in range(rounds):
            for index in range(len(self.devices)):
                await self.pull(index)
            await self.project(10_000)
            for index in range(len(self.devices)):
                await self.pull(index)
            if not any(d.replica.count(OpStatus.PENDING) for d in self.devices):
                break
        return [d.device_id for d in self.devices if d.replica.count(OpStatus.PENDING)]

    def count_log(self) -> tuple[int, int]:
        """(records in the log, copies among them) — as far as records were decoded."""
        total = sum(len(rs) for partitions in self.log.topics.values() for rs in partitions)
        distinct = {v.event.event_id for v in self._decoded.values() if isinstance(v, SourcedEvent)}
        return total, total - len(distinct)


def written(devices: Sequence[Device]) -> int:
    """Ops devices hold (any status): what they wrote."""
    return sum(d.replica.count(status) for d in devices for status in OpStatus)
