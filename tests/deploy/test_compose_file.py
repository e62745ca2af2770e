"""deploy/compose.yaml, checked structurally (no Docker engine or compose plugin exists on these machines)."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).parents[2] / "deploy" / "compose.yaml"


def _load() -> dict[str, object]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def test_compose_defines_kafka_kraft_a_registry_and_postgres() -> None:
    services = _load()["services"]
    assert isinstance(services, dict)
    assert {"kafka", "registry", "postgres"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft, no ZooKeeper"
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["registry"]["environment"]["APICURIO_CCOMPAT_USE_CANONICAL_HASH"] == "true"


def test_every_service_has_a_healthcheck_and_binds_loopback_only() -> None:
    for name, service in _load()["services"].items():  # type: ignore[union-attr]
        assert "healthcheck" in service, name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_mounted_files_and_dependencies_exist() -> None:
    services = _load()["services"]
    for name, service in services.items():  # type: ignore[union-attr]
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
