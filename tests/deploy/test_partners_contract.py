"""docs/asyncapi.yaml: generated from schemas/ (never drifts), a valid AsyncAPI 3.0 document, and consistent
with what the Kubernetes manifests actually create; `keel partners asyncapi` writes and checks it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from deploy.cli import app
from deploy.partners.asyncapi import build_asyncapi, render_asyncapi
from schemas.catalog import SCHEMAS_ROOT, default_catalog

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"
K8S = ROOT / "deploy" / "k8s"

runner = CliRunner()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(COMMITTED.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_committed_document_is_what_the_catalog_generates() -> None:
    assert COMMITTED.read_text() == render_asyncapi(build_asyncapi(default_catalog())), (
        "docs/asyncapi.yaml drifted from schemas/: run `keel partners asyncapi --out docs/asyncapi.yaml`"
    )


def test_the_document_is_valid_asyncapi_3(document: dict[str, Any], validator: jsonschema.Draft7Validator) -> None:
    assert document["asyncapi"] == "3.0.0"
    errors = [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("operations", "receiveTaskChanges", "action"), "consume"),
        (("components", "messages", "taskChangeV1", "payload", "schema", "type"), "recordz"),
        (("components", "messages", "taskChangeV1", "bindings", "kafka", "schemaIdLocation"), "footer"),
        (("servers", "local", "protocol"), 42),
    ],
)
def test_the_official_schema_catches_a_broken_document(
    document: dict[str, Any], validator: jsonschema.Draft7Validator, path: tuple[str, ...], value: object
) -> None:
    broken = copy.deepcopy(document)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert not validator.is_valid(broken)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_the_document_matches_the_topics_and_services_of_the_manifests(document: dict[str, Any]) -> None:
    manifests = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    topics = {d["spec"]["topicName"]: d["spec"]["config"] for d in manifests if d["kind"] == "KafkaTopic"}
    channels = {c["address"]: c for c in document["channels"].values()}
    assert set(channels) == set(topics)
    for address, config in topics.items():
        declared = channels[address]["bindings"]["kafka"]["topicConfiguration"]
        # Change topics keep everything (retention.ms -1); compacted state topics keep the newest per key.
        assert declared.get("retention.ms") == config.get("retention.ms")
        assert declared["cleanup.policy"] == [config["cleanup.policy"]]
    services = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Service"}
    registry = document["servers"]["cluster"]["bindings"]["kafka"]["schemaRegistryUrl"]
    assert registry.startswith("http://keel-registry.keel.svc:8080/")
    assert services["keel-registry"]["spec"]["ports"][0]["port"] == 8080
    kafka = next(d for d in manifests if d["kind"] == "Kafka")
    listener_port = kafka["spec"]["kafka"]["listeners"][0]["port"]
    bootstrap = document["servers"]["cluster"]["variables"]["bootstrap"]["default"]
    assert bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap.keel.svc:{listener_port}"


def test_cli_writes_the_document(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.yaml"
    result = runner.invoke(app, ["partners", "asyncapi", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == COMMITTED.read_text()


def test_cli_prints_to_standard_output_without_out() -> None:
    result = runner.invoke(app, ["partners", "asyncapi"])
    assert result.exit_code == 0
    assert result.stdout == COMMITTED.read_text()


def test_cli_check_passes_when_up_to_date_and_fails_on_drift(tmp_path: Path) -> None:
    assert runner.invoke(app, ["partners", "asyncapi", "--check", "--out", str(COMMITTED)]).exit_code == 0
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(COMMITTED.read_text() + "# edited by hand\n")
    result = runner.invoke(app, ["partners", "asyncapi", "--check", "--out", str(stale)])
    assert result.exit_code == 1
    assert "out of date" in result.output
    assert runner.invoke(app, ["partners", "asyncapi", "--check", "--out", str(tmp_path / "none")]).exit_code == 1
    assert runner.invoke(app, ["partners", "asyncapi", "--check"]).exit_code == 2


def test_cli_describes_the_default_deployment_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_TOPIC_PREFIX", "elsewhere")
    result = runner.invoke(app, ["partners", "asyncapi"])
    assert result.stdout == COMMITTED.read_text()
    prefixed = runner.invoke(app, ["partners", "asyncapi", "--prefix", "acme"])
    assert "address: acme.task.changes" in prefixed.stdout


def test_cli_exit_2_for_a_catalog_that_does_not_load(tmp_path: Path) -> None:
    broken = tmp_path / "schemas"
    (broken / "avro" / "task").mkdir(parents=True)
    (broken / "avro" / "envelope.avsc").write_text((SCHEMAS_ROOT / "avro" / "envelope.avsc").read_text())
    (broken / "avro" / "task" / "task.v1.avsc").write_text("{not json")
    result = runner.invoke(app, ["partners", "asyncapi", "--catalog", str(broken)])
    assert result.exit_code == 2
    assert "task.v1.avsc" in result.output
