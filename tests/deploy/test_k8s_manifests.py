"""deploy/k8s: kubeconform (strict) against the committed schemas, then what Keel needs of the manifests.

kubeconform is built through the Go module proxy into ~/.cache/keel/bin by scripts/k8s-validate.sh; the
schemas (Kubernetes, Strimzi, CloudNativePG) are data committed under deploy/k8s/schemas/, which
scripts/k8s_schemas.py regenerates from package registries only (Go module proxy, Maven Central).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from consumers.health import HealthReport, HealthServer
from keel.settings import Settings
from schemas.catalog import default_catalog

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
VALIDATE = ROOT / "scripts" / "k8s-validate.sh"
REGENERATE = ROOT / "scripts" / "k8s_schemas.py"
SERVICES = {
    "gateway": "gateway_port",
    "projector": "projector_health_port",
    "dashboard": "dashboard_port",
    "state-relay": "state_relay_health_port",
}
PREFIX = str(Settings.model_fields["topic_prefix"].default)


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents() -> Iterator[dict[str, Any]]:
    for path in _manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield document


def _find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = _find(kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _run_validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(VALIDATE), *map(str, files)], capture_output=True, text=True, check=False)


# ---------------------------------------------------------------- kubeconform


def test_kubeconform_accepts_every_manifest() -> None:
    result = _run_validate()
    assert result.returncode == 0, result.stdout + result.stderr
    documents = sum(1 for _ in _documents())
    assert f"{documents} resources found in {len(_manifest_files())} files - Valid: {documents}, Invalid: 0" in (
        result.stdout
    )


@pytest.mark.parametrize(
    ("file", "old", "new", "complaint"),
    [
        ("gateway.yaml", "minAvailable: 1", "minAvailabel: 1", "additional properties 'minAvailabel'"),
        ("projector.yaml", "containerPort: 8701", 'containerPort: "8701"', "got string, want integer"),
        ("kafka-topics.yaml", "partitions: 12", "partitions: twelve", "got string, want integer"),
        ("kafka.yaml", "authorization:", "authorisation:", "additional properties 'authorisation'"),
        ("kafka-users.yaml", "type: scram-sha-512", "type: scram-sha-256", "must be one of"),
        # KafkaUser ACLs: a misspelt key, a scalar for a list, an unknown operation, an ACL key in the resource.
        ("kafka-users.yaml", "operations: [Describe, Write]", "operation: [Describe, Write]", "'operation'"),
        ("kafka-users.yaml", "operations: [Describe, Write]", "operations: Write", "got string, want array"),
        ("kafka-users.yaml", "operations: [Describe, Read]", "operations: [Describe, Consume]", "must be one of"),
        ("kafka-users.yaml", "patternType: literal}", "patternType: literal, host: '*'}", "properties 'host'"),
        ("kafka.yaml", "replicas: 3", "replicas: three", "got string, want integer"),
        ("postgres.yaml", "instances: 3", "instance: 3", "missing property 'instances'"),
    ],
)
def test_kubeconform_rejects_a_broken_manifest(tmp_path: Path, file: str, old: str, new: str, complaint: str) -> None:
    text = (K8S / file).read_text()
    assert old in text
    broken = tmp_path / file
    broken.write_text(text.replace(old, new, 1))
    result = _run_validate(broken)
    assert result.returncode == 1
    assert complaint in result.stdout, result.stdout


def test_every_kind_has_a_committed_schema_and_nothing_else_is_committed() -> None:
    expected = set()
    for document in _documents():
        group, _, version = document["apiVersion"].rpartition("/")
        kind = document["kind"].lower()
        if "." in group:
            expected.add(f"crds/{group}/{kind}_{version}.json")
        elif group:
            expected.add(f"core/{kind}-{group}-{version}.json")
        else:
            expected.add(f"core/{kind}-{version}.json")
    committed = {p.relative_to(SCHEMAS).as_posix() for p in SCHEMAS.glob("*/**/*.json")}
    assert committed == expected
    sources = json.loads((SCHEMAS / "SOURCES.json").read_text())
    assert set(sources) == {"kubernetes", "kafka.strimzi.io", "postgresql.cnpg.io"}
    assert "Maven Central" in sources["kafka.strimzi.io"], "Strimzi's schemas come from io.strimzi:api"


def test_a_broken_kafka_user_acl_is_reported_with_its_path(tmp_path: Path) -> None:
    text = (K8S / "kafka-users.yaml").read_text()
    broken = tmp_path / "kafka-users.yaml"
    broken.write_text(text.replace("operations: [Describe, Write]", "operation: [Describe, Write]", 1))
    result = _run_validate(broken)
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "KafkaUser keel-gateway is invalid" in line]
    assert "/spec/authorization/acls/0" in line, line
    assert "missing property 'operations'" in line, line
    assert "additional properties 'operation' not allowed" in line, line
    documents = len(list(yaml.safe_load_all(text)))
    assert f"Valid: {documents - 1}, Invalid: 1" in result.stdout, "the other users still validate"


def test_committed_schemas_are_what_the_script_generates(tmp_path: Path) -> None:
    # Every schema, Strimzi's included, is rebuilt from registry artifacts into an empty folder.
    out = tmp_path / "schemas"
    result = subprocess.run(
        [sys.executable, str(REGENERATE), "--out", str(out)], capture_output=True, text=True, check=False, timeout=600
    )
    assert result.returncode == 0, result.stderr
    generated = {p.relative_to(out).as_posix() for p in out.rglob("*.json")}
    assert generated == {p.relative_to(SCHEMAS).as_posix() for p in SCHEMAS.rglob("*.json")}
    for relative in sorted(generated):
        assert (out / relative).read_text() == (SCHEMAS / relative).read_text(), relative


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in _manifest_files()]
    assert kustomization["namespace"] == _one("Namespace", "keel")["metadata"]["name"]


# ---------------------------------------------------------------- Kafka: KRaft, topics, principals


def _change_topics() -> dict[str, dict[str, Any]]:
    topics = {t["spec"]["topicName"]: t for t in _find("KafkaTopic")}
    return {name: spec for name, spec in topics.items() if name.endswith(".changes")}


def test_kafka_runs_kraft_with_controller_and_broker_pools_and_scram() -> None:
    pools = {pool["metadata"]["name"]: pool["spec"] for pool in _find("KafkaNodePool")}
    roles = {role for spec in pools.values() for role in spec["roles"]}
    assert roles == {"controller", "broker"}
    assert all(spec["replicas"] >= 3 for spec in pools.values()), "a quorum survives one node down"
    kafka = _one("Kafka", "keel")["spec"]["kafka"]
    assert "zookeeper" not in _one("Kafka", "keel")["spec"]
    assert all(listener["authentication"]["type"] == "scram-sha-512" for listener in kafka["listeners"])
    assert all(listener["tls"] for listener in kafka["listeners"])
    assert kafka["authorization"]["type"] == "simple"
    assert kafka["config"]["auto.create.topics.enable"] is False
    assert kafka["config"]["min.insync.replicas"] == 2


def _state_topics() -> dict[str, dict[str, Any]]:
    topics = {t["spec"]["topicName"]: t for t in _find("KafkaTopic")}
    return {name: spec for name, spec in topics.items() if name.endswith(".state")}


def test_one_topic_per_catalog_entity_kept_forever_plus_the_dlq() -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in _find("KafkaTopic")}
    expected = {f"{PREFIX}.{entity}.changes" for entity in default_catalog().entities()}
    states = {f"{PREFIX}.{entity}.state" for entity in default_catalog().entities()}
    assert set(topics) == expected | states | {f"{PREFIX}.dlq"}
    for name, spec in topics.items():
        assert spec["replicas"] == 3, name
        if name in states:
            continue
        assert spec["config"]["retention.ms"] == -1, name
        assert spec["config"]["cleanup.policy"] == "delete", name
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in _find("KafkaTopic")} == {"keel"}


def test_state_topics_are_compacted_and_partitioned_like_the_change_topics() -> None:
    change_partitions = {topic["spec"]["partitions"] for topic in _change_topics().values()}
    for name, topic in _state_topics().items():
        assert topic["spec"]["config"]["cleanup.policy"] == "compact", name
        assert {topic["spec"]["partitions"]} == change_partitions, name


def test_the_state_relay_only_writes_the_state_topics() -> None:
    assert _grants("keel-state-relay") == {
        ("topic", topic, "literal", op) for topic in _state_topics() for op in ("Describe", "Write")
    }
    relay = _one("Deployment", "keel-state-relay")["spec"]
    assert (relay["replicas"], relay["strategy"]["type"]) == (1, "Recreate"), "a single writer"


def test_projector_autoscaling_stops_at_the_partition_count() -> None:
    partitions = {spec["spec"]["partitions"] for spec in _change_topics().values()}
    assert len(partitions) == 1, "every change topic has the same partition count"
    hpa = _one("HorizontalPodAutoscaler", "keel-projector")["spec"]
    assert hpa["maxReplicas"] == partitions.pop(), "a consumer beyond the partition count would sit idle"
    assert hpa["scaleTargetRef"]["name"] == "keel-projector"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300, "each scale-down rebalances"


def test_gateway_autoscales_on_cpu() -> None:
    hpa = _one("HorizontalPodAutoscaler", "keel-gateway")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "keel-gateway"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


def _grants(user: str) -> set[tuple[str, str, str, str]]:
    """(resource type, name, pattern, operation) granted to a KafkaUser."""
    spec = _one("KafkaUser", user)["spec"]
    assert spec["authentication"]["type"] == "scram-sha-512"
    return {
        (acl["resource"]["type"], acl["resource"]["name"], acl["resource"]["patternType"], operation)
        for acl in spec["authorization"]["acls"]
        for operation in acl["operations"]
    }


def test_gateway_may_only_write_the_change_topics() -> None:
    topics = set(_change_topics())
    assert _grants("keel-gateway") == {
        ("topic", topic, "literal", op) for topic in topics for op in ("Describe", "Write")
    }


def test_projector_reads_the_change_topics_in_its_group_and_writes_the_dlq() -> None:
    topics = set(_change_topics())
    group = str(Settings.model_fields["consumer_group"].default)
    assert _grants("keel-projector") == (
        {("topic", topic, "literal", op) for topic in topics for op in ("Describe", "Read")}
        | {("group", group, "literal", op) for op in ("Describe", "Read")}
        | {("topic", f"{PREFIX}.dlq", "literal", op) for op in ("Describe", "Write")}
    )


def test_dashboard_only_describes() -> None:
    assert {operation for *_, operation in _grants("keel-dashboard")} == {"Describe"}


def test_a_partner_gets_only_granted_topics_and_its_own_groups() -> None:
    grants = _grants("partner-example")
    topics = {name for kind, name, _, _ in grants if kind == "topic"}
    assert topics <= set(_change_topics()) | set(_state_topics()), "never the DLQ, never a wildcard"
    reads = {name for kind, name, _, op in grants if kind == "topic" and op == "Read"}
    assert set(_state_topics()) <= reads, "partners read the resolved state"
    assert {pattern for kind, _, pattern, _ in grants if kind == "topic"} == {"literal"}
    groups = {(name, pattern) for kind, name, pattern, _ in grants if kind == "group"}
    assert groups == {("partner-example.", "prefix")}, "only groups under its own name"
    assert {kind for kind, *_ in grants} == {"topic", "group"}, "no cluster or transactional-id rights"


def test_no_principal_holds_all_or_wildcards() -> None:
    for user in _find("KafkaUser"):
        for kind, name, _, operation in _grants(user["metadata"]["name"]):
            assert operation != "All", (user["metadata"]["name"], kind, name)
            assert name != "*", (user["metadata"]["name"], kind, name)


# ---------------------------------------------------------------- the Keel services


@pytest.mark.parametrize(("service", "port_setting"), sorted(SERVICES.items()))
def test_deployments_run_their_service_with_probes_on_healthz(service: str, port_setting: str) -> None:
    deployment = _one("Deployment", f"keel-{service}")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["run", service], "the image's entrypoint is `keel`"
    (port,) = container["ports"]
    assert port["containerPort"] == Settings.model_fields[port_setting].default
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # The projector's and the relay's health server (consumers/health.py) also answers readiness on its own path.
    ready = "/readyz" if service in ("projector", "state-relay") else "/healthz"
    assert container["readinessProbe"]["httpGet"] == {"path": ready, "port": port["name"]}
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_pods_run_non_root_read_only_without_privileges(service: str) -> None:
    pod = _one("Deployment", f"keel-{service}")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    context = pod["containers"][0]["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_deployment_has_a_pdb_and_a_service_that_select_its_pods(service: str) -> None:
    deployment = _one("Deployment", f"keel-{service}")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget", f"keel-{service}")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    k8s_service = _one("Service", f"keel-{service}")["spec"]
    assert k8s_service["selector"].items() <= labels.items()
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in k8s_service["ports"]} <= port_names


def test_settings_and_secrets_are_wired_to_real_settings_and_operator_made_secrets() -> None:
    config = _one("ConfigMap", "keel-settings")["data"]
    fields = set(Settings.model_fields)
    assert {key.removeprefix("KEEL_").lower() for key in config} <= fields, "no misspelt setting"
    assert all(isinstance(value, str) for value in config.values()), "ConfigMap values are strings"
    listeners = {f"KEEL_{field.upper()}" for field in fields if field.endswith("_host")}
    assert {name: config.get(name) for name in listeners} == dict.fromkeys(listeners, "0.0.0.0"), "probes reach pods"
    users = {u["metadata"]["name"] for u in _find("KafkaUser")}
    for service in SERVICES:
        container = _one("Deployment", f"keel-{service}")["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        assert {name.removeprefix("KEEL_").lower() for name in env} <= fields
        username = env["KEEL_KAFKA_SASL_USERNAME"]["value"]
        assert username in users, "a KafkaUser exists for the principal"
        password = env["KEEL_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": username, "key": "password"}, "the User Operator's Secret"
        database = env["KEEL_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert database == {"name": f"{_one('Cluster', 'keel-pg')['metadata']['name']}-app", "key": "uri"}
        assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["keel-settings"]
    mounted = {
        v["secret"]["secretName"]
        for v in _one("Deployment", "keel-gateway")["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert mounted == {"keel-cluster-ca-cert"}, "the Strimzi cluster CA, for KEEL_KAFKA_SSL_CAFILE"
    assert config["KEEL_KAFKA_SSL_CAFILE"].startswith("/etc/keel/kafka-ca/")
    assert config["KEEL_KAFKA_BOOTSTRAP"] == "keel-kafka-bootstrap:9093"
    assert _find("Secret") == [], "no credentials in the manifests"


def test_registry_stores_schemas_in_postgres_and_postgres_has_its_database() -> None:
    container = _one("Deployment", "keel-registry")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["APICURIO_STORAGE_KIND"] == "sql"
    assert env["APICURIO_DATASOURCE_URL"] == "jdbc:postgresql://keel-pg-rw:5432/apicurio"
    assert env["APICURIO_CCOMPAT_USE_CANONICAL_HASH"] == "true"
    database = _one("Database", "keel-pg-apicurio")["spec"]
    assert (database["name"], database["owner"], database["cluster"]["name"]) == ("apicurio", "apicurio", "keel-pg")
    roles = {role["name"] for role in _one("Cluster", "keel-pg")["spec"]["managed"]["roles"]}
    assert "apicurio" in roles
    assert _one("Cluster", "keel-pg")["spec"]["instances"] >= 3


async def test_the_projector_health_server_answers_the_probe_paths() -> None:
    container = _one("Deployment", "keel-projector")["spec"]["template"]["spec"]["containers"][0]
    paths = {container[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe", "startupProbe")}
    server = HealthServer(lambda: HealthReport(alive=True, ready=False), port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            statuses = {path: (await client.get(path)).status_code for path in sorted(paths)}
    finally:
        await server.stop()
    assert statuses == {"/healthz": 200, "/readyz": 503}, "alive but not ready: restart no, traffic no"


def test_a_job_registers_the_schemas_on_every_apply() -> None:
    job = _one("Job", "keel-schemas-register")["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["schemas", "register"]
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["keel-settings"], "KEEL_REGISTRY_URL"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["ttlSecondsAfterFinished"] > 0, "gone after a while, so the next apply runs it again"
