"""What secure mode writes: broker properties, format arguments, service settings, database role policy.

Pure checks on files in a temporary folder; the running behaviour is in test_secure_kafka.py and
test_database_roles.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.database_roles import role_dsn, table_policy
from deploy.local.kafka_cluster import KafkaCluster
from deploy.local.secure_kafka import SecureKafka
from keel.errors import ConfigurationError
from keel.settings import Settings


def _properties(cluster: KafkaCluster) -> dict[str, str]:
    text = cluster._properties(cluster.nodes[0])
    return dict(line.split("=", 1) for line in text.splitlines())


def test_the_plaintext_cluster_has_no_security_settings(tmp_path: Path) -> None:
    props = _properties(KafkaCluster(tmp_path / "kafka", tmp_path / "libs", base_port=9292))
    assert props["listeners"] == ("PLAINTEXT://127.0.0.1:9292,CONTROLLER://127.0.0.1:9293,PROXIED://127.0.0.1:9294")
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT"
    assert not [key for key in props if "ssl" in key or "sasl" in key or "authorizer" in key or "super" in key]


def test_the_secure_cluster_overrides_listeners_and_adds_tls_sasl_and_the_authorizer(tmp_path: Path) -> None:
    security = SecureKafka(tmp_path)
    security.prepare()
    cluster = KafkaCluster(tmp_path / "kafka-secure", tmp_path / "libs", base_port=9292, security=security)
    props = _properties(cluster)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9292,CONTROLLER://127.0.0.1:9293,PROXIED://127.0.0.1:9294"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:9292,PROXIED://127.0.0.1:9295"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL,PROXIED:SASL_SSL"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"].split(";") == ["User:admin", "User:CN=keel-broker,O=Keel local stack"]
    assert (props["ssl.keystore.type"], props["ssl.truststore.type"]) == ("PEM", "PEM")
    assert Path(props["ssl.keystore.location"]) == security.tls.broker_keystore.resolve()
    admin_password = security.password("admin")
    assert f'password="{admin_password}"' in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    # Everything else stays as the plaintext cluster has it.
    assert props["auto.create.topics.enable"] == "false"
    assert props["min.insync.replicas"] == "1"
    flag, value = security.format_arguments()
    assert flag == "--add-scram"
    assert value == f"SCRAM-SHA-512=[name=admin,iterations=8192,password={admin_password}]"
    assert security.secrets() == [admin_password]


def test_services_get_their_own_principal_and_the_ca(tmp_path: Path) -> None:
    security = SecureKafka(tmp_path)
    security.prepare()
    settings = security.service_settings(Settings(), "projector", "127.0.0.1:9292")
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert settings.kafka_sasl_username == "keel-projector"
    assert settings.kafka_sasl_password == security.password("keel-projector")
    assert settings.kafka_ssl_cafile == security.tls.ca_cert.resolve()
    env = security.service_env("gateway", "127.0.0.1:9292")
    assert env["KEEL_KAFKA_SASL_USERNAME"] == "keel-gateway"
    assert Settings(**{k.removeprefix("KEEL_").lower(): v for k, v in env.items()}).kafka_sasl_username == (
        "keel-gateway"
    )
    with pytest.raises(ConfigurationError, match="unknown role 'dashboard'"):
        security.service_env("dashboard", "127.0.0.1:9292")
    assert "password" not in str(security.describe()).lower().replace("credentials_file", "")


def test_partner_entities_come_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_STACK_PARTNER_ENTITIES", "task, project")
    assert Settings().stack_partner_entities == ("task", "project")


def test_role_policy_and_dsns() -> None:
    policy = table_policy(["task", "project"])
    assert policy["gateway"]["task"] == ("SELECT",)
    assert policy["projector"]["task"] == ("SELECT", "INSERT", "UPDATE")
    assert "devices" not in policy["projector"]
    assert "applied_ops" not in policy["gateway"]
    assert set(policy["readonly"]) == set(policy["gateway"]) | set(policy["projector"]) | {"projection_snapshots"}
    assert all(privileges == ("SELECT",) for privileges in policy["readonly"].values())
    dsn = role_dsn("postgresql://keel:keel@127.0.0.1:55432/keel?sslmode=disable", "keel_gateway", "p-w_d")
    assert dsn == "postgresql://keel_gateway:p-w_d@127.0.0.1:55432/keel?sslmode=disable"
