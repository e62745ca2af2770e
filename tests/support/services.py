"""Where the integration tests find their services.

Resolution order (first that applies wins):
1. endpoints given in the environment (`KEEL_KAFKA_BOOTSTRAP`, `KEEL_REGISTRY_URL`, `KEEL_DATABASE_URL`);
2. the local stack (`keel stack up --with-toxiproxy`), started if absent;
3. testcontainers (Kafka, PostgreSQL, a Confluent-compatible registry) when a Docker engine answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from keel.settings import Settings

ENV_KEYS = ("KEEL_KAFKA_BOOTSTRAP", "KEEL_REGISTRY_URL", "KEEL_DATABASE_URL")


@dataclass(frozen=True)
class Services:
    """Endpoints of the real services a test talks to."""

    kafka_bootstrap: str
    registry_url: str
    database_url: str
    source: str
    toxiproxy_url: str | None = None
    kafka_proxied_bootstrap: str | None = None

    def settings(self, **overrides: object) -> Settings:
        """Settings pointing at these services, with per-test overrides."""
        values: dict[str, object] = {
            "kafka_bootstrap": self.kafka_bootstrap,
            "registry_url": self.registry_url,
            "database_url": self.database_url,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


def _docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return result.returncode == 0


def _java_available() -> bool:
    return shutil.which("java") is not None and shutil.which("mvn") is not None


@contextmanager
def resolve_services() -> Iterator[Services]:
    """Yield services per the resolution order; stops only what it started itself."""
    if all(os.environ.get(key) for key in ENV_KEYS):
        yield Services(
            os.environ["KEEL_KAFKA_BOOTSTRAP"],
            os.environ["KEEL_REGISTRY_URL"],
            os.environ["KEEL_DATABASE_URL"],
            source="env",
            toxiproxy_url=os.environ.get("KEEL_TOXIPROXY_URL"),
            kafka_proxied_bootstrap=os.environ.get("KEEL_KAFKA_PROXIED_BOOTSTRAP"),
        )
        return
    if _java_available() or not _docker_engine_available():
        from deploy.local.stack import Stack

        settings = Settings()
        stack = Stack(settings)
        stack.up(with_toxiproxy=True)
        kafka = stack.kafka()
        yield Services(
            kafka.bootstrap,
            stack.registry().url,
            stack.postgres().dsn,
            source="local-stack",
            toxiproxy_url=stack.toxiproxy().url,
            kafka_proxied_bootstrap=kafka.proxied_bootstrap,
        )
        return
    with ExitStack() as containers:
        yield _start_testcontainers(containers)


def _start_testcontainers(containers: ExitStack) -> Services:
    """Kafka (KRaft), PostgreSQL and Apicurio Registry in Docker, for machines that have an engine."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = containers.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
    postgres = containers.enter_context(
        PostgresContainer("postgres:15", username="keel", password="keel", dbname="keel", driver=None)
    )
    registry = (
        DockerContainer("apicurio/apicurio-registry:3.3.3")
        .with_env("APICURIO_CCOMPAT_USE_CANONICAL_HASH", "true")
        .with_exposed_ports(8080)
    )
    containers.enter_context(registry)
    wait_for_logs(registry, "Listening on", timeout=120)
    registry_url = f"http://{registry.get_container_host_ip()}:{registry.get_exposed_port(8080)}/apis/ccompat/v7"
    import httpx

    httpx.put(f"{registry_url}/config", json={"compatibility": "BACKWARD"}, timeout=10).raise_for_status()
    return Services(kafka.get_bootstrap_server(), registry_url, postgres.get_connection_url(), source="testcontainers")
