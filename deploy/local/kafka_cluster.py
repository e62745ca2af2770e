"""Apache Kafka in KRaft mode from Maven Central jars: one combined node, or three for fault tests.

Plaintext unless a `ClusterSecurity` is given: `deploy/local/secure_kafka.py` supplies TLS listeners,
SASL/SCRAM and the authorizer (`keel stack up --secure`).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deploy.local.processes import ManagedProcess, run_checked

__all__ = ["ClusterSecurity", "KafkaCluster", "KafkaNode", "new_cluster_id"]

_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = INFO
"""


@dataclass(frozen=True)
class KafkaNode:
    """One broker+controller process and its ports.

    Besides the client listener each node has a PROXIED listener advertised at the Toxiproxy port in
    front of it: clients follow advertised listeners after bootstrap, so without it traffic would
    bypass the proxy.
    """

    node_id: int
    client_port: int
    controller_port: int
    proxied_port: int
    proxy_port: int
    folder: Path

    @property
    def process(self) -> ManagedProcess:
        """The managed JVM of this node."""
        return ManagedProcess(f"kafka-{self.node_id}", self.folder / "kafka.pid", self.folder / "kafka.log")

    @property
    def endpoint(self) -> str:
        """host:port of the client listener (PLAINTEXT, or SASL_SSL on a secure cluster)."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def proxied_endpoint(self) -> str:
        """host:port that clients should use to go through Toxiproxy."""
        return f"127.0.0.1:{self.proxy_port}"


def new_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64 without padding, never starting with '-'.

    Kafka's own `Uuid.randomUuid` draws again for a leading '-', because command lines (StorageTool's
    `-t ID`) read such an id as an option; one id in 64 would otherwise fail `kafka-storage format`.
    """
    while True:
        candidate = base64.urlsafe_b64encode(random_bytes(16)).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


class ClusterSecurity(Protocol):
    """What a secure cluster adds to the plaintext one (implemented by `secure_kafka.SecureKafka`)."""

    def prepare(self) -> None:
        """Create certificates and passwords that are missing."""

    def server_properties(self, node: KafkaNode) -> dict[str, str]:
        """Properties overriding or extending the plaintext ones of `node`."""

    def format_arguments(self) -> list[str]:
        """Extra `StorageTool format` arguments (bootstrap credentials)."""

    def secrets(self) -> list[str]:
        """Strings to mask in logged command lines."""

    def client_config(self, principal: str | None = None) -> dict[str, str]:
        """Security settings (librdkafka names) of an admin client, without bootstrap servers."""


class KafkaCluster:
    """A KRaft cluster of 1 or 3 combined broker/controller nodes on 127.0.0.1."""

    def __init__(
        self,
        folder: Path,
        libs: Path,
        *,
        brokers: int = 1,
        base_port: int = 9092,
        java: str = "java",
        heap_mb: int = 512,
        security: ClusterSecurity | None = None,
    ) -> None:
        if brokers not in (1, 3):
            raise ValueError("the local stack runs 1 or 3 brokers")
        self.folder = folder
        self.libs = libs
        self.brokers = brokers
        self.java = java
        self.heap_mb = heap_mb
        self.security = security
        if brokers == 1:
            self.nodes = [KafkaNode(1, base_port, base_port + 1, base_port + 2, base_port + 3, folder / "node-1")]
        else:
            self.nodes = [
                KafkaNode(
                    i, i * 10000 + 9092, i * 10000 + 9093, i * 10000 + 9094, i * 10000 + 9095, folder / f"node-{i}"
                )
                for i in (1, 2, 3)
            ]

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers of the client listeners."""
        return ",".join(node.endpoint for node in self.nodes)

    @property
    def proxied_bootstrap(self) -> str:
        """Bootstrap servers through Toxiproxy."""
        return ",".join(node.proxied_endpoint for node in self.nodes)

    @property
    def log_files(self) -> list[Path]:
        """Log file of every node."""
        return [node.process.log_file for node in self.nodes]

    def _voters(self) -> str:
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)

    def _properties(self, node: KafkaNode) -> str:
        replication = 1 if self.brokers == 1 else 3
        min_isr = 1 if self.brokers == 1 else 2
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": self._voters(),
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{node.client_port},CONTROLLER://127.0.0.1:{node.controller_port},"
                f"PROXIED://127.0.0.1:{node.proxied_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.client_port},PROXIED://127.0.0.1:{node.proxy_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT",
            "log.dirs": str((node.folder / "data").resolve()),
            "num.partitions": "3",
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replication),
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_isr),
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created on purpose with their partition count and retention; a typo must not
            # silently create one.
            "auto.create.topics.enable": "false",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if self.security is not None:
            lines.update(self.security.server_properties(node))
        return "".join(f"{key}={value}\n" for key, value in lines.items())

    def _cluster_id(self) -> str:
        id_file = self.folder / "cluster.id"
        if not id_file.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            id_file.write_text(new_cluster_id())
        return id_file.read_text().strip()

    def _jvm(self, main_class: str, *args: str, heap_mb: int | None = None) -> list[str]:
        heap = heap_mb or self.heap_mb
        return [
            self.java,
            f"-Xms{min(256, heap)}m",
            f"-Xmx{heap}m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={(self.folder / 'log4j2.properties').resolve()}",
            "-cp",
            f"{self.libs.resolve()}/*",
            main_class,
            *args,
        ]

    def prepare(self) -> None:
        """Write configs and format each node's storage once."""
        cluster_id = self._cluster_id()
        (self.folder / "log4j2.properties").write_text(_LOG4J2)
        if self.security is not None:
            self.security.prepare()
        for node in self.nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            props = node.folder / "server.properties"
            if self.security is not None:
                # The file holds the admin password of the inter-broker listener: owner only.
                props.touch(mode=0o600)
                props.chmod(0o600)
            props.write_text(self._properties(node))
            if not (node.folder / "data" / "meta.properties").exists():
                # A static quorum (controller.quorum.voters) is formatted without --standalone.
                extra = self.security.format_arguments() if self.security is not None else []
                run_checked(
                    self._jvm(
                        "kafka.tools.StorageTool",
                        "format",
                        f"--cluster-id={cluster_id}",  # `=`: an id kept from before may start with '-'
                        "-c",
                        str(props.resolve()),
                        *extra,
                        heap_mb=256,
                    ),
                    what=f"formatting Kafka node {node.node_id}",
                    log_file=node.process.log_file,
                    redact=self.security.secrets() if self.security is not None else (),
                )

    def start_node(self, node: KafkaNode) -> None:
        """Start one node unless it is already running."""
        if node.process.is_alive():
            return
        node.process.start(
            self._jvm("kafka.Kafka", str((node.folder / "server.properties").resolve())), cwd=node.folder
        )

    def start(self) -> None:
        """Start every node that is not running."""
        self.prepare()
        for node in self.nodes:
            self.start_node(node)

    def stop(self) -> list[str]:
        """Stop every node we started; names of the stopped ones."""
        return [f"kafka-{n.node_id}" for n in self.nodes if n.process.stop(timeout_s=30)]

    def pids(self) -> list[int | None]:
        """Pid per node (None where not running)."""
        return [node.process.pid() for node in self.nodes]

    def is_healthy(self, timeout_s: float = 5.0) -> bool:
        """True when every node runs and a client can list topics through each node's listener."""
        if not all(node.process.is_alive() for node in self.nodes):
            return False
        from confluent_kafka.admin import AdminClient

        security = self.security.client_config() if self.security is not None else {}
        for node in self.nodes:
            # log_level 0: refused connections are the expected answer while the broker starts; the probe's
            # verdict is the signal, librdkafka's per-attempt lines on stderr are noise.
            admin = AdminClient(
                {"bootstrap.servers": node.endpoint, "socket.timeout.ms": 3000, "log_level": 0, **security}
            )
            try:
                metadata = admin.list_topics(timeout=timeout_s)
            except Exception:  # noqa: BLE001 - any client failure means "not ready yet"
                return False
            if len(metadata.brokers) < self.brokers:
                return False
        return True

    def wait_healthy(self, timeout_s: float) -> bool:
        """Poll `is_healthy` until it holds or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_healthy():
                return True
            if not all(node.process.is_alive() for node in self.nodes):
                return False
            time.sleep(1.0)
        return False
