"""R2 — a 3-broker cluster (RF 3, min.insync.replicas 2, acks=all) losing its partition leader under load.

The shared stack runs one broker, so this scenario starts a Kafka cluster of its own
(`deploy/local/kafka_cluster.py`, 3 KRaft nodes on the fixed ports 19092/29092/39092 and the three above
each, data in the run's folder) and points a projector and a gateway of the run at it; the registry and
PostgreSQL stay the shared ones. The change topics are created with replication factor 3; the brokers
default to `min.insync.replicas=2`; the gateway produces with acks=all. SDK devices push all along.

Faults, against whichever broker leads the task topic's partition 0 at that moment, waiting for the
partition to be fully in sync again after each:

- `kill`: SIGKILL; it stays down until the controller has fenced it and moved the leadership (one broker
  session timeout, more when it was the active controller too), plus a second or two; started again;
- `stop`: SIGSTOP until the leadership has moved the same way, a second or two more, then SIGCONT;
- `restart`: a clean stop (the leadership moves at once) and start.

The time until the leadership moved is each fault's `failover_s`.

Then two of the three brokers are killed: while they are down the gateway must answer 503 and must
acknowledge nothing (no op of any device turns acknowledged once the produce timeout has passed). They
come back, everyone drains, and the checker judges: no acknowledged op lost, none applied twice, device
digests = projection = clean replay. The cluster is killed and its data deleted at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from deploy.chaos.context import ChaosRun, wait_until
from deploy.chaos.fleet import ChaosFleet, open_service_rig, write_for
from deploy.chaos.scenario import ScenarioOutcome, register
from deploy.local.kafka_cluster import KafkaCluster, KafkaNode
from keel.errors import ConfigurationError, ServiceUnavailableError
from keel.settings import Settings
from producers.device.store import OpStatus

__all__ = ["broker_faults"]

BROKER_START_S = 120.0
FAILOVER_LIMIT_S = 45.0  # a frozen or dead leader must have lost its partition by then
PRODUCE_TIMEOUT_S = 3.0


def _ports_busy(cluster: KafkaCluster) -> list[int]:
    """Ports of the cluster someone already listens on."""
    busy = []
    for node in cluster.nodes:
        for port in (node.client_port, node.controller_port, node.proxied_port, node.proxy_port):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    busy.append(port)
    return busy


def _detached(start: Callable[[], None]) -> None:
    """Start Kafka JVMs without CPython's "subprocess is still running" ResourceWarning.

    The nodes are detached daemons tracked by pid files (`deploy/local/processes.py`): their `Popen` handles
    are dropped on purpose, so the warning their finalizer raises says nothing (under pytest's
    `filterwarnings = error` it would fail the run). The subprocess module still reaps them once they exit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        start()


@dataclass(frozen=True)
class _Partition:
    leader: int
    isr: tuple[int, ...]


def _describe(bootstrap: str, topic: str) -> _Partition | None:
    """Leader and in-sync replicas of the topic's partition 0 (None while metadata is unavailable)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000, "log_level": 0})
    try:
        metadata = admin.list_topics(topic, timeout=5)
    except Exception:  # noqa: BLE001 - any client failure means "no answer right now"
        return None
    partition = metadata.topics.get(topic)
    if partition is None or partition.error is not None or 0 not in partition.partitions:
        return None
    found = partition.partitions[0]
    return _Partition(int(found.leader), tuple(sorted(int(r) for r in found.isrs)))


class _Cluster:
    """The run's 3-node cluster and the faults played on it."""

    def __init__(self, cluster: KafkaCluster, topic: str) -> None:
        self.cluster = cluster
        self.topic = topic
        self.stopped: set[int] = set()

    def node(self, node_id: int) -> KafkaNode:
        """A node by id."""
        return next(n for n in self.cluster.nodes if n.node_id == node_id)

    async def partition(self) -> _Partition | None:
        """Partition 0 of the task topic now."""
        return await asyncio.to_thread(_describe, self.cluster.bootstrap, self.topic)

    async def wait_in_sync(self, timeout_s: float = 90.0) -> float | None:
        """Until partition 0 has a leader and all three replicas in sync; seconds, or None."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            found = await self.partition()
            if found is not None and found.leader >= 0 and len(found.isr) == 3:
                return time.monotonic() - began
            await asyncio.sleep(1.0)
        return None

    async def leader_moved(
        self, old: int, timeout_s: float = FAILOVER_LIMIT_S
    ) -> tuple[_Partition | None, float | None]:
        """Until partition 0 is led by another broker than `old`: what was seen last, and seconds (None: never).

        A broker that dies or freezes keeps its leadership until the controller fences it, one broker session
        timeout after its last heartbeat — longer when it was also the active controller, since its
        successor must be elected first and then gives every broker a fresh session.
        """
        began = time.monotonic()
        found = await self.partition()
        while found is None or found.leader in (-1, old):
            if time.monotonic() - began > timeout_s:
                return found, None
            await asyncio.sleep(0.5)
            found = await self.partition()
        return found, time.monotonic() - began

    async def start(self, node_id: int) -> None:
        """Start a node that is down."""
        await asyncio.to_thread(_detached, partial(self.cluster.start_node, self.node(node_id)))

    def signal(self, node_id: int, sig: signal.Signals) -> None:
        """Send a signal to one node's JVM."""
        self.node(node_id).process.kill(sig)
        if sig is signal.SIGSTOP:
            self.stopped.add(node_id)
        elif sig is signal.SIGCONT:
            self.stopped.discard(node_id)

    async def wait_dead(self, node_id: int, timeout_s: float = 30.0) -> None:
        """Until the node's process is gone."""
        process = self.node(node_id).process

        async def gone() -> bool:
            return not process.is_alive()

        await wait_until(gone, timeout_s=timeout_s)

    async def close(self) -> None:
        """SIGKILL every node (the run's data is thrown away, no clean shutdown needed) and delete its data."""
        for node in self.cluster.nodes:
            node.process.kill(signal.SIGKILL)
        for node in self.cluster.nodes:
            await self.wait_dead(node.node_id)
            node.process.pid_file.unlink(missing_ok=True)
            await asyncio.to_thread(shutil.rmtree, node.folder / "data", ignore_errors=True)


async def _fault(run: ChaosRun, cluster: _Cluster, kind: str) -> dict[str, Any]:
    before = await cluster.partition()
    if before is None or before.leader < 0:
        raise ServiceUnavailableError("kafka", "partition 0 of the task topic has no leader before a fault")
    leader = before.leader
    began = time.monotonic()
    meanwhile: _Partition | None = None
    failover: float | None = None
    if kind == "kill":
        cluster.signal(leader, signal.SIGKILL)
        await cluster.wait_dead(leader)
        meanwhile, failover = await cluster.leader_moved(leader)
        await asyncio.sleep(run.rng.uniform(1.0, 3.0))  # and stays down a little longer, under load
        await cluster.start(leader)
    elif kind == "stop":
        cluster.signal(leader, signal.SIGSTOP)
        meanwhile, failover = await cluster.leader_moved(leader)
        await asyncio.sleep(run.rng.uniform(1.0, 3.0))
        cluster.signal(leader, signal.SIGCONT)
    else:
        await asyncio.to_thread(cluster.node(leader).process.stop, 30.0)
        meanwhile, failover = await cluster.leader_moved(leader)
        await cluster.start(leader)
    during = time.monotonic() - began
    in_sync = await cluster.wait_in_sync()
    after = await cluster.partition()
    return {
        "kind": kind,
        "leader": leader,
        "leader_meanwhile": meanwhile.leader if meanwhile else None,
        "isr_meanwhile": list(meanwhile.isr) if meanwhile else None,
        "new_leader": after.leader if after else None,
        "failover_s": None if failover is None else round(failover, 1),
        "fault_s": round(during, 1),
        "back_in_sync_s": None if in_sync is None else round(in_sync, 1),
    }


async def _two_down(run: ChaosRun, cluster: _Cluster, fleet: ChaosFleet, probe_device: Any) -> dict[str, Any]:
    """Kill two brokers; the gateway must answer 503 and acknowledge nothing until they are back."""
    found = await cluster.partition()
    survivor = found.leader if found is not None and found.leader > 0 else 1
    victims = [n.node_id for n in cluster.cluster.nodes if n.node_id != survivor]
    for node_id in victims:
        cluster.signal(node_id, signal.SIGKILL)
    for node_id in victims:
        await cluster.wait_dead(node_id)
    await asyncio.sleep(PRODUCE_TIMEOUT_S + 2.0)  # pushes in flight when they died have been answered by now
    acked_before = sum(d.replica.count(OpStatus.SENT) for d in fleet.devices)
    answers: Counter[str] = Counter()
    window = run.pick(6.0, 30.0)
    began = time.monotonic()
    while time.monotonic() - began < window:
        probe_device.upsert("task", f"probe-{answers.total()}", {"title": "while two brokers are down"})
        try:
            await probe_device.sync()
            answers["acknowledged"] += 1
        except ServiceUnavailableError as error:
            answers["503" if error.service == "gateway" and "HTTP 503" in error.detail else repr(error)[:80]] += 1
        except Exception as error:  # noqa: BLE001 - any other answer is a finding, reported as such
            answers[type(error).__name__] += 1
        await asyncio.sleep(0.5)
    acked_after = sum(d.replica.count(OpStatus.SENT) for d in fleet.devices)
    for node_id in victims:
        await cluster.start(node_id)
    back = await cluster.wait_in_sync(180.0)
    return {
        "killed": victims,
        "window_s": window,
        "probe_answers": dict(answers),
        "acked_while_two_down": acked_after - acked_before,
        "back_in_sync_s": None if back is None else round(back, 1),
    }


async def _own_cluster(run: ChaosRun) -> tuple[Settings, _Cluster, float]:
    """Start the run's 3-broker cluster (its own ports and folder); the run's settings on it, seconds to start."""
    base = run.settings
    libs = base.cache_dir / f"kafka-{base.kafka_version}" / "libs"
    if not libs.is_dir():
        raise ConfigurationError(f"Kafka jars not found in {libs}: run `keel stack up` once to download them")
    kafka = KafkaCluster(run.folder / "kafka3", libs, brokers=3, heap_mb=384)
    busy = _ports_busy(kafka)
    if busy:
        raise ConfigurationError(f"R2 needs ports {busy} for its own 3-broker cluster; something listens there")
    # The run's own cluster is plaintext, whatever the stack the run was started against speaks.
    plaintext = {
        "kafka_security_protocol": "PLAINTEXT",
        "kafka_sasl_mechanism": None,
        "kafka_sasl_username": None,
        "kafka_sasl_password": None,
        "kafka_ssl_cafile": None,
    }
    settings = base.model_copy(
        update={
            "kafka_bootstrap": kafka.bootstrap,
            "change_topic_replication": 3,
            "change_topic_partitions": 3,
            **plaintext,
        }
    )
    cluster = _Cluster(kafka, settings.topic_for("task"))
    began = time.monotonic()
    run.on_cleanup(cluster.close)  # registered first: a cluster that half started is killed all the same
    await asyncio.to_thread(_detached, kafka.start)
    if not await asyncio.to_thread(kafka.wait_healthy, BROKER_START_S):
        raise ServiceUnavailableError("kafka", f"the 3-broker cluster did not start; see {kafka.log_files}")
    return settings, cluster, time.monotonic() - began


@register(
    "R2",
    "3-broker cluster: leader kill -9, SIGSTOP, restart",
    "on a cluster with RF 3, min.insync.replicas 2 and acks=all, losing the partition leader again and again "
    "under load loses no acknowledged op; with 2 of 3 brokers down the gateway answers 503 and acknowledges "
    "nothing",
    quick="its own 3-broker cluster, 4 devices, kill + stop + restart of the leader once each, 2 down for 6 s",
    full="its own 3-broker cluster, 8 devices, 3 rounds of kill + stop + restart, 2 down for 30 s",
    needs=("kafka-cluster",),
)
async def broker_faults(run: ChaosRun) -> ScenarioOutcome:
    """Run R2 (module docstring)."""
    settings, cluster, cluster_start_s = await _own_cluster(run)
    rig = await open_service_rig(
        run, settings=settings, gateway_env={"KEEL_GATEWAY_PRODUCE_TIMEOUT_S": str(PRODUCE_TIMEOUT_S)}
    )
    if await cluster.wait_in_sync() is None:
        raise ServiceUnavailableError("kafka", "the task topic's partition 0 never got 3 in-sync replicas")
    fleet = ChaosFleet(run, rig.url, run.enrollment_secret)
    run.on_cleanup(fleet.close)
    for n in range(int(run.pick(4, 8))):
        await fleet.enroll(f"tenant-{n % 2}")
    probe = await fleet.enroll("tenant-probe")  # pushes explicitly while two brokers are down (no sync loop)
    writers = [d for d in fleet.devices if d is not probe]
    for device in writers:
        await device.start()
    stop = asyncio.Event()

    async def users() -> None:
        while not stop.is_set():
            await asyncio.gather(*(write_for(d, 1.0, run.rng, rate_per_s=4.0) for d in writers))

    writing = asyncio.create_task(users(), name="r2-users")
    faults: list[dict[str, Any]] = []
    try:
        for _ in range(int(run.pick(1, 3))):
            for kind in run.rng.sample(["kill", "stop", "restart"], 3):
                faults.append(await _fault(run, cluster, kind))
                await asyncio.sleep(run.rng.uniform(1.0, 3.0))
        two_down = await _two_down(run, cluster, fleet, probe)
        await probe.start()  # its ops refused during the window go out now
    finally:
        stop.set()
        await writing
    stuck, caught_up = await rig.settle(fleet, run.pick(120, 240))
    verdict = await rig.verdict(fleet.evidence())
    report = verdict.report
    outcome = ScenarioOutcome.judged(report, report.acknowledged)
    answers = two_down["probe_answers"]
    outcome.check("every device drained", not stuck and fleet.pending() == 0, f"stuck: {stuck or 'none'}")
    outcome.check("the projector caught up", caught_up is not None, f"{caught_up or 0:.1f} s after the devices drained")
    outcome.check(
        "leadership moved off the faulty broker, and it came back in sync",
        all(f["back_in_sync_s"] is not None and f["leader_meanwhile"] not in (None, -1, f["leader"]) for f in faults),
        "; ".join(
            f"{f['kind']} of leader {f['leader']}: meanwhile leader {f['leader_meanwhile']} "
            f"(ISR {f['isr_meanwhile']}), in sync {f['back_in_sync_s']} s after it was back"
            for f in faults
        ),
    )
    outcome.check(
        "with 2 of 3 brokers down the gateway answered 503",
        answers.get("503", 0) > 0 and set(answers) == {"503"},
        f"{answers}",
    )
    outcome.check(
        "with 2 of 3 brokers down nothing was acknowledged",
        two_down["acked_while_two_down"] == 0 and answers.get("acknowledged", 0) == 0,
        f"{two_down['acked_while_two_down']} ops turned acknowledged during the {two_down['window_s']:g} s",
    )
    outcome.check(
        "the cluster recovered", two_down["back_in_sync_s"] is not None, f"in sync after {two_down['back_in_sync_s']} s"
    )
    outcome.figures.update(
        {
            "leader_faults": dict(Counter(f["kind"] for f in faults)),
            "fault_log": faults,
            "unavailable_503": answers.get("503", 0),
            "acked_while_two_down": two_down["acked_while_two_down"],
            "two_down": two_down,
            "cluster_start_s": round(cluster_start_s, 1),
            "copies_in_log": verdict.replay.redeliveries,
            "sdk_stop_timeouts": fleet.stop_timeouts,
        }
    )
    run.note("R2 runs its own 3-broker cluster on ports 19092-19095, 29092-29095, 39092-39095 (stopped at the end)")
    return outcome
