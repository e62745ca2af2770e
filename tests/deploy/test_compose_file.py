"""deploy/compose.yaml, checked structurally (no Docker engine or compose plugin exists on these machines).

The file is validated against the Compose Specification's JSON schema, then against what Keel needs: the
services built from the Dockerfile, settings pointing at the services of the file, health checks on the
health endpoints, the topics of the catalog created before anything produces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from keel.settings import Settings
from schemas.catalog import default_catalog

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.schema.json"
KEEL_SERVICES = {
    "gateway": "gateway_port",
    "projector": "projector_health_port",
    "dashboard": "dashboard_port",
}
ONE_SHOT_JOBS = {"kafka-init", "schemas-init"}


def _load() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    services = _load()["services"]
    assert isinstance(services, dict)
    return services


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


def test_the_file_follows_the_compose_specification() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = [f"{error.json_path}: {error.message}" for error in validator.iter_errors(_load())]
    assert errors == []


def test_the_schema_check_catches_a_misspelt_key() -> None:
    document = _load()
    document["services"]["gateway"]["helthcheck"] = document["services"]["gateway"].pop("healthcheck")
    validator = jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    assert any("helthcheck" in error.message for error in validator.iter_errors(document))


def test_compose_defines_kafka_kraft_a_registry_and_postgres(services: dict[str, Any]) -> None:
    assert {"kafka", "registry", "postgres"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft, no ZooKeeper"
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["registry"]["environment"]["APICURIO_CCOMPAT_USE_CANONICAL_HASH"] == "true"


def test_every_long_running_service_has_a_healthcheck_and_binds_loopback_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT_JOBS:
            assert service["restart"] == "no", f"{name} runs once"
        else:
            assert "healthcheck" in service, name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_mounted_files_and_dependencies_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"


@pytest.mark.parametrize("name", sorted(KEEL_SERVICES))
def test_keel_services_are_built_from_the_dockerfile_and_run_their_service(services: dict[str, Any], name: str) -> None:
    service = services[name]
    context = (COMPOSE.parent / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"]["dockerfile"]).is_file()
    assert service["entrypoint"] == ["keel", "run", name]


@pytest.mark.parametrize(("name", "port_setting"), sorted(KEEL_SERVICES.items()))
def test_health_checks_probe_the_health_endpoint_on_the_settings_port(
    services: dict[str, Any], name: str, port_setting: str
) -> None:
    service = services[name]
    port = _default(port_setting)
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
    probe = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in probe
    listeners = {f"KEEL_{field.upper()}" for field in Settings.model_fields if field.endswith("_host")}
    assert listeners, "the settings name the interfaces services listen on"
    for listener in sorted(listeners):
        assert service["environment"][listener] == "0.0.0.0", f"{listener}: reachable from outside the container"


@pytest.mark.parametrize("name", [*sorted(KEEL_SERVICES), "schemas-init"])
def test_keel_settings_point_at_the_services_of_this_file(services: dict[str, Any], name: str) -> None:
    environment = services[name]["environment"]
    assert {key.removeprefix("KEEL_").lower() for key in environment} <= set(Settings.model_fields), "no typos"

    host, _, port = environment["KEEL_KAFKA_BOOTSTRAP"].partition(":")
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{host}:{port}" in listeners, "the bootstrap is the listener advertised inside the network"

    registry = urlsplit(environment["KEEL_REGISTRY_URL"])
    assert registry.hostname == "registry"
    assert registry.port == int(services["registry"]["environment"]["QUARKUS_HTTP_PORT"])
    assert registry.path == "/apis/ccompat/v7"

    database = urlsplit(environment["KEEL_DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert (database.username, database.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert environment["KEEL_CONSUMER_GROUP"] == _default("consumer_group")


@pytest.mark.parametrize("name", sorted(KEEL_SERVICES))
def test_services_start_after_topics_schemas_and_database(services: dict[str, Any], name: str) -> None:
    dependencies = services[name]["depends_on"]
    assert dependencies["kafka-init"]["condition"] == "service_completed_successfully"
    assert dependencies["schemas-init"]["condition"] == "service_completed_successfully"
    assert dependencies["postgres"]["condition"] == "service_healthy"
    assert services["schemas-init"]["depends_on"]["registry"]["condition"] == "service_healthy"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_kafka_init_creates_every_change_topic_of_the_catalog_and_the_dlq(services: dict[str, Any]) -> None:
    script = services["kafka-init"]["command"][0]
    loop = re.search(r"for entity in ([a-z_ ]+); do create \"keel\.\$\$entity\.changes\" (\d+); done", script)
    assert loop is not None, script
    assert sorted(loop.group(1).split()) == default_catalog().entities()
    assert re.search(r"^create keel\.dlq \d+$", script, re.MULTILINE)
    assert "--config retention.ms=-1" in script, "change topics are kept forever"
    assert "--if-not-exists" in script, "re-running the job is harmless"


def test_schemas_init_registers_the_catalog(services: dict[str, Any]) -> None:
    assert services["schemas-init"]["entrypoint"] == ["keel", "schemas", "register"]
