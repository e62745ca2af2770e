"""The secure local stack (`keel stack up --secure`) in a folder and on ports of this test session alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.local.secure_kafka import SecureKafka
from deploy.local.stack import Stack
from keel.settings import Settings
from tests.support.naming import unique, unique_identifier

KEEL = str(Path(sys.executable).with_name("keel"))

# Away from the shared stack (9092, 8081, 9001, 55432, 8474), test_stack_lifecycle (9192, 8181, 9101, 55532,
# 8574) and a developer's secure stack (9492, 8481, 9401, 55832, 8874): Kafka takes port..port+3.
SECURE_PORTS = {
    "kafka_port": 9692,
    "registry_port": 8681,
    "registry_management_port": 9601,
    "postgres_port": 55932,
    "toxiproxy_port": 8974,
}


@dataclass(frozen=True)
class SecureStack:
    """A running secure stack and the names this session provisioned on it."""

    stack: Stack
    settings: Settings

    @property
    def security(self) -> SecureKafka:
        """Certificates, credentials and principals."""
        return self.stack.security()

    @property
    def bootstrap(self) -> str:
        """The SASL_SSL client listener."""
        return self.stack.kafka().bootstrap

    @property
    def env(self) -> dict[str, str]:
        """Environment that points `keel stack …` at this stack."""
        return {
            "KEEL_HOME": str(self.settings.home),
            "KEEL_KAFKA_PORT": str(self.settings.kafka_port),
            "KEEL_REGISTRY_PORT": str(self.settings.registry_port),
            "KEEL_REGISTRY_MANAGEMENT_PORT": str(self.settings.registry_management_port),
            "KEEL_POSTGRES_PORT": str(self.settings.postgres_port),
            "KEEL_TOXIPROXY_PORT": str(self.settings.toxiproxy_port),
            "KEEL_TOPIC_PREFIX": self.settings.topic_prefix,
            "KEEL_CONSUMER_GROUP": self.settings.consumer_group,
            "KEEL_PG_SCHEMA": self.settings.pg_schema,
            "KEEL_STACK_PARTNER_ENTITIES": ",".join(self.settings.stack_partner_entities),
        }

    def topic(self, entity: str) -> str:
        """Change topic of an entity type under this session's prefix."""
        return self.settings.topic_for(entity)

    def service_settings(self, role: str, **overrides: object) -> Settings:
        """Settings a service of `role` would run with (SASL_SSL, its principal and password)."""
        return self.security.service_settings(self.settings, role, self.bootstrap).model_copy(update=overrides)

    def librdkafka(self, role: str) -> dict[str, str]:
        """confluent-kafka configuration of a role's principal."""
        principal = self.security.principals.by_role()[role]
        return {"bootstrap.servers": self.bootstrap, **self.security.client_config(principal)}


def keel(stack: SecureStack, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `keel …` against `stack` (a child process: the services it starts are not ours to reap)."""
    return subprocess.run(
        [KEEL, *args], capture_output=True, text=True, check=False, timeout=timeout_s, env={**os.environ, **stack.env}
    )


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    """`keel stack up --secure` once per session; `down --purge` at the end (its PostgreSQL folder included)."""
    home: Path = tmp_path_factory.mktemp("secure") / "stack"
    settings = Settings(
        home=home,
        topic_prefix=unique("sk"),
        consumer_group=unique("projector"),
        pg_schema=unique_identifier("sec"),
        stack_partner_entities=("task",),
        log_json=False,
        **SECURE_PORTS,
    )
    stack = SecureStack(Stack(settings), settings)
    try:
        up = keel(stack, "stack", "up", "--secure", "--with-toxiproxy")
        assert up.returncode == 0, up.stderr[-3000:]
        yield stack
    finally:
        down = keel(stack, "stack", "down", "--purge")
        assert down.returncode == 0, down.stderr[-3000:]
