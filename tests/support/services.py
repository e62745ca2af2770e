"""Where the integration tests find their services.

Resolution order (first that applies wins):
1. endpoints given in the environment (`KEEL_KAFKA_BOOTSTRAP`, `KEEL_REGISTRY_URL`, `KEEL_DATABASE_URL`, and
   the `KEEL_KAFKA_SECURITY_PROTOCOL`/`_SASL_*`/`_SSL_CAFILE` of a secured cluster);
2. the local stack (`keel stack up --with-toxiproxy`), started if absent; the secure stack (`--secure`) when
   `KEEL_TEST_SECURE=1` (`make test-secure`) or when the running stack is the secure one;
3. testcontainers (Kafka, PostgreSQL, a Confluent-compatible registry) when a Docker engine answers.

Secure mode: tests log in to Kafka as the stack's super user `admin` over SASL_SSL (they create topics and
groups under names of their own on the fly), and to PostgreSQL as the schema owner with its password.
What each service principal and role may do is tested on its own (tests/deploy/test_secure_kafka.py,
test_database_roles.py). `Services.settings()` carries the security fields, `kafka_security_env()` passes
them to child processes and `keel.kafka_adapter.librdkafka_options()` to direct confluent-kafka clients
(docs/security.md).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from keel.kafka_adapter import librdkafka_options
from keel.settings import Settings

ENV_KEYS = ("KEEL_KAFKA_BOOTSTRAP", "KEEL_REGISTRY_URL", "KEEL_DATABASE_URL")
SECURE_FLAG = "KEEL_TEST_SECURE"  # `make test-secure` sets it (scripts/with-stack.sh --secure)
TEST_PRINCIPAL = "admin"  # the secure stack's super user: tests create topics and groups of their own


def secure_requested() -> bool:
    """Whether this test session was asked to run against the secure stack."""
    return os.environ.get(SECURE_FLAG, "").strip().lower() in ("1", "true", "yes")


def kafka_security_env(settings: Settings) -> dict[str, str]:
    """`KEEL_KAFKA_*` security variables of `settings` for a child process (PLAINTEXT said explicitly)."""
    return settings.kafka_security_environment()


def consumer_groups(settings: Settings) -> set[str]:
    """Every consumer group id the broker of `settings` lists (through confluent-kafka's admin client)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**librdkafka_options(settings), "log_level": 0})
    return {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid}


@dataclass(frozen=True)
class Services:
    """Endpoints of the real services a test talks to."""

    kafka_bootstrap: str
    registry_url: str
    database_url: str
    source: str
    toxiproxy_url: str | None = None
    kafka_proxied_bootstrap: str | None = None
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: Path | None = None

    @property
    def secure(self) -> bool:
        """Whether Kafka needs TLS/SASL (the secure stack or a secured cluster from the environment)."""
        return self.kafka_security_protocol != "PLAINTEXT"

    def settings(self, **overrides: object) -> Settings:
        """Settings pointing at these services (security included), with per-test overrides."""
        values: dict[str, object] = {
            "kafka_bootstrap": self.kafka_bootstrap,
            "registry_url": self.registry_url,
            "database_url": self.database_url,
            "kafka_security_protocol": self.kafka_security_protocol,
            "kafka_sasl_mechanism": self.kafka_sasl_mechanism,
            "kafka_sasl_username": self.kafka_sasl_username,
            "kafka_sasl_password": self.kafka_sasl_password,
            "kafka_ssl_cafile": self.kafka_ssl_cafile,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def librdkafka(self, bootstrap: str | None = None) -> dict[str, str]:
        """confluent-kafka connection settings for these services."""
        return librdkafka_options(self.settings(), bootstrap)

    def kafka_env(self) -> dict[str, str]:
        """`KEEL_KAFKA_*` security variables for a child process."""
        return kafka_security_env(self.settings())


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
        configured = Settings()  # the KEEL_KAFKA_SECURITY_PROTOCOL/_SASL_*/_SSL_CAFILE of a secured cluster
        yield Services(
            os.environ["KEEL_KAFKA_BOOTSTRAP"],
            os.environ["KEEL_REGISTRY_URL"],
            os.environ["KEEL_DATABASE_URL"],
            source="env",
            toxiproxy_url=os.environ.get("KEEL_TOXIPROXY_URL"),
            kafka_proxied_bootstrap=os.environ.get("KEEL_KAFKA_PROXIED_BOOTSTRAP"),
            kafka_security_protocol=configured.kafka_security_protocol,
            kafka_sasl_mechanism=configured.kafka_sasl_mechanism,
            kafka_sasl_username=configured.kafka_sasl_username,
            kafka_sasl_password=configured.kafka_sasl_password,
            kafka_ssl_cafile=configured.kafka_ssl_cafile,
        )
        return
    if _java_available() or not _docker_engine_available():
        yield _local_stack(Settings())
        return
    with ExitStack() as containers:
        yield _start_testcontainers(containers)


def _local_stack(settings: Settings) -> Services:
    """The local stack of `settings` (KEEL_HOME, KEEL_*_PORT), started if absent; secure when asked or running so."""
    from deploy.local.stack import Stack

    stack = Stack(settings)
    running_secure = stack.is_secure() and any(pid is not None for pid in stack.kafka().pids())
    secure = secure_requested() or running_secure
    stack.up(with_toxiproxy=True, secure=secure)
    kafka = stack.kafka()
    services = Services(
        kafka.bootstrap,
        stack.registry().url,
        stack.postgres().dsn,
        source="local-stack",
        toxiproxy_url=stack.toxiproxy().url,
        kafka_proxied_bootstrap=kafka.proxied_bootstrap,
    )
    if not secure:
        return services
    admin = stack.security().service_settings(settings, TEST_PRINCIPAL, kafka.bootstrap)
    return dataclasses.replace(
        services,
        kafka_security_protocol=admin.kafka_security_protocol,
        kafka_sasl_mechanism=admin.kafka_sasl_mechanism,
        kafka_sasl_username=admin.kafka_sasl_username,
        kafka_sasl_password=admin.kafka_sasl_password,
        kafka_ssl_cafile=admin.kafka_ssl_cafile,
    )


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
