"""`keel stack up --secure`: every principal can do what it was granted and is denied everything else.

Runs against a secure stack of this session alone (tests/deploy/conftest.py): TLS listeners, SASL/SCRAM-SHA-512,
the StandardAuthorizer with per-principal ACLs (deploy/local/acls.py). Clients are the ones services use:
`keel.kafka_adapter` (aiokafka) built from settings, and confluent-kafka where a test needs the exact
librdkafka error code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from deploy.local.certificates import certificate_info
from keel.errors import ServiceUnavailableError
from keel.event_log import OutgoingRecord
from keel.kafka_adapter import AioKafkaLogWriter, client_options
from keel.settings import Settings
from tests.deploy.conftest import SecureStack, keel
from tests.support.naming import unique

pytestmark = pytest.mark.integration


async def _write(settings: Settings, topic: str, value: bytes) -> list[Any]:
    writer = AioKafkaLogWriter(settings, request_timeout_ms=10_000)
    await writer.start()
    try:
        return await writer.write([OutgoingRecord(topic, b"key", value)])
    finally:
        await writer.stop()


async def _consume(
    settings: Settings, topic: str, *, group: str | None, wanted: bytes | None = None, timeout_s: float = 30.0
) -> list[bytes]:
    """Values read from `topic` (every partition assigned when `group` is None, else subscribed)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        if group is None:
            consumer.assign([TopicPartition(topic, p) for p in range(settings.change_topic_partitions)])
        else:
            consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (wanted is None or wanted not in values):
            batches = await consumer.getmany(timeout_ms=500)
            values.extend(record.value for records in batches.values() for record in records)
            if wanted is None and values:
                break
        if group is not None and values:
            await consumer.commit()
    finally:
        await consumer.stop()
    return values


def _connection_errors(
    config: dict[str, str], until: int | None = None, seconds: float = 10.0
) -> tuple[list[KafkaError], list[str]]:
    """Errors (error_cb) and log lines librdkafka reports while a producer tries to connect.

    Polls until an error with code `until` arrives (or any error when None), or `seconds` pass.
    """
    errors: list[KafkaError] = []
    logs: list[str] = []

    class _Logger:
        def log(self, level: int, fmt: str, *args: object) -> None:
            logs.append(str(args[-1]) if args else fmt)

    def done() -> bool:
        return any(until is None or e.code() == until for e in errors)

    producer = Producer({**config, "error_cb": errors.append, "logger": _Logger()})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        producer.poll(0.2)
    producer.flush(1)
    return errors, logs


def _read_denial(config: dict[str, str], topic: str, seconds: float = 15.0) -> KafkaError | None:
    """The error a consumer gets reading partition 0 of `topic` from the start; None if it reads a record.

    Without Describe the topic is invisible (the metadata answer carries the error); with Describe but not
    Read the fetch fails. The throwaway group is refused too, and ignored: assign needs no group.
    """
    consumer = Consumer({**config, "group.id": unique("unused"), "enable.auto.commit": False, "log_level": 0})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        invisible: KafkaError | None = metadata.topics[topic].error
        if invisible is not None:
            return invisible
        consumer.assign([KafkaPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error: KafkaError | None = message.error()
            if error is None:
                return None
            if error.code() != KafkaError.GROUP_AUTHORIZATION_FAILED:
                return error
    finally:
        consumer.close()
    raise AssertionError(f"reading {topic} neither failed nor returned a record")


def _codes(errors: list[KafkaError]) -> list[str]:
    return [e.name() for e in errors]


# ------------------------------------------------------------------------------------------ the stack itself
def test_status_json_shows_the_secure_endpoint(secure_stack: SecureStack) -> None:
    result = keel(secure_stack, "stack", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    kafka = status["kafka"]
    assert kafka["healthy"] is True
    assert kafka["endpoint"] == f"127.0.0.1:{secure_stack.settings.kafka_port}"
    assert (kafka["secure"], kafka["security_protocol"], kafka["sasl_mechanism"]) == (True, "SASL_SSL", "SCRAM-SHA-512")
    assert Path(kafka["ca_file"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert status["postgres"]["password_auth"] is True
    assert all(entry["healthy"] for entry in status.values()), status
    assert json.loads((secure_stack.settings.home / "stack.json").read_text())["secure"] is True


def test_credentials_are_owner_only_and_printed_for_services(secure_stack: SecureStack) -> None:
    store = secure_stack.security.credentials.path
    assert store.stat().st_mode & 0o777 == 0o600
    assert store.parent.stat().st_mode & 0o777 == 0o700
    result = keel(secure_stack, "stack", "credentials", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    stored = json.loads(store.read_text())
    principals = printed["kafka"]["principals"]
    assert principals["gateway"] == {"username": "keel-gateway", "password": stored["kafka"]["keel-gateway"]}
    assert printed["kafka"]["bootstrap"] == secure_stack.bootstrap
    env = keel(secure_stack, "stack", "credentials", "--env", "projector")
    assert env.returncode == 0, env.stderr
    lines = dict(line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines())
    assert lines["KEEL_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert lines["KEEL_KAFKA_SASL_USERNAME"] == "keel-projector"
    assert lines["KEEL_DATABASE_URL"].startswith("postgresql://keel_projector:")
    # Nothing the broker logged contains the admin password (it is on the format command line).
    admin_password = stored["kafka"]["admin"]
    for log in secure_stack.stack.kafka().log_files:
        assert admin_password not in log.read_text()


# ------------------------------------------------------------------------------------------ what is granted
async def test_gateway_writes_projector_reads_and_dead_letters(secure_stack: SecureStack) -> None:
    marker = unique("v").encode()
    positions = await _write(secure_stack.service_settings("gateway"), secure_stack.topic("task"), marker)
    assert positions[0].topic == secure_stack.topic("task")
    projector = secure_stack.service_settings("projector")
    values = await _consume(projector, secure_stack.topic("task"), group=projector.consumer_group, wanted=marker)
    assert marker in values
    dead = await _write(projector, secure_stack.settings.dlq_topic, marker)
    assert dead[0].topic == secure_stack.settings.dlq_topic


async def test_operator_writes_overrides_to_change_topics(secure_stack: SecureStack) -> None:
    positions = await _write(secure_stack.service_settings("operator"), secure_stack.topic("project"), b"override")
    assert positions[0].offset >= 0


async def test_partner_reads_its_granted_topic_in_its_own_group(secure_stack: SecureStack) -> None:
    marker = unique("p").encode()
    await _write(secure_stack.service_settings("gateway"), secure_stack.topic("task"), marker)
    partner = secure_stack.service_settings("partner")
    values = await _consume(partner, secure_stack.topic("task"), group=unique("partner-example."), wanted=marker)
    assert marker in values


async def test_the_proxied_listener_is_sasl_ssl_too(secure_stack: SecureStack) -> None:
    proxied = secure_stack.stack.kafka().proxied_bootstrap
    settings = secure_stack.service_settings("gateway", kafka_bootstrap=proxied)
    positions = await _write(settings, secure_stack.topic("comment"), b"through toxiproxy")
    assert positions[0].topic == secure_stack.topic("comment")


# ------------------------------------------------------------------------------------------ what is denied
async def test_gateway_may_not_read_change_topics(secure_stack: SecureStack) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume(secure_stack.service_settings("gateway"), secure_stack.topic("task"), group=None)


@pytest.mark.parametrize(
    ("role", "target", "denial"),
    [
        ("gateway", "dlq", TopicAuthorizationFailedError),
        ("projector", "task", TopicAuthorizationFailedError),
        # The partner writes nowhere, so it is refused a producer id before any topic is named.
        ("partner", "task", ClusterAuthorizationFailedError),
    ],
)
async def test_writes_outside_the_grant_are_refused(
    secure_stack: SecureStack, role: str, target: str, denial: type[Exception]
) -> None:
    topic = secure_stack.settings.dlq_topic if target == "dlq" else secure_stack.topic(target)
    with pytest.raises(ServiceUnavailableError) as raised:
        await _write(secure_stack.service_settings(role), topic, b"not allowed")
    assert isinstance(raised.value.__cause__, denial)


@pytest.mark.parametrize(
    ("role", "target"), [("partner", "project"), ("operator", "task"), ("gateway", "dlq"), ("projector", "dlq")]
)
def test_reads_outside_the_grant_are_refused(secure_stack: SecureStack, role: str, target: str) -> None:
    topic = secure_stack.settings.dlq_topic if target == "dlq" else secure_stack.topic(target)
    error = _read_denial(secure_stack.librdkafka(role), topic)
    assert error is not None, f"{role} read {topic}"
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.mark.parametrize(
    ("role", "group"), [("partner", "projector"), ("projector", "other"), ("gateway", "projector")]
)
async def test_groups_outside_the_grant_are_refused(secure_stack: SecureStack, role: str, group: str) -> None:
    name = secure_stack.settings.consumer_group if group == "projector" else unique("other")
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume(secure_stack.service_settings(role), secure_stack.topic("task"), group=name, timeout_s=15)


def test_service_principals_may_not_administer_the_cluster(secure_stack: SecureStack) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(secure_stack.librdkafka("gateway"))
    create = admin.create_topics([NewTopic(f"{secure_stack.settings.topic_prefix}.evil.changes", 1, 1)])
    with pytest.raises(KafkaException) as topic_denied:
        next(iter(create.values())).result(timeout=30)
    assert topic_denied.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    grant = AclBinding(
        ResourceType.TOPIC,
        secure_stack.settings.dlq_topic,
        ResourcePatternType.LITERAL,
        "User:keel-gateway",
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    with pytest.raises(KafkaException) as acl_denied:
        next(iter(admin.create_acls([grant]).values())).result(timeout=30)
    assert acl_denied.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_a_wrong_password_fails_authentication(secure_stack: SecureStack) -> None:
    config = {**secure_stack.librdkafka("gateway"), "sasl.password": "w" * 32}
    errors, _ = _connection_errors(config, until=KafkaError._AUTHENTICATION)
    failures = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    assert failures, _codes(errors)
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in failures[0].str()


def test_a_plaintext_client_is_refused_by_the_tls_listener(secure_stack: SecureStack) -> None:
    log = secure_stack.stack.kafka().log_files[0]
    before = log.read_text().count("(SSL handshake failed)")
    plaintext = {"bootstrap.servers": secure_stack.bootstrap, "security.protocol": "PLAINTEXT"}
    errors, logs = _connection_errors(plaintext, until=KafkaError._ALL_BROKERS_DOWN)
    assert KafkaError._ALL_BROKERS_DOWN in [e.code() for e in errors], _codes(errors)
    assert any("connection closed by peer" in line and "APIVERSION_QUERY" in line for line in logs), logs
    deadline = time.monotonic() + 10
    while log.read_text().count("(SSL handshake failed)") == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().count("(SSL handshake failed)") > before, "the broker saw no failed TLS handshake"


def test_tls_without_trusting_the_stack_ca_fails(secure_stack: SecureStack) -> None:
    config = {k: v for k, v in secure_stack.librdkafka("gateway").items() if k != "ssl.ca.location"}
    errors, _ = _connection_errors(config, until=KafkaError._SSL)
    failures = [e for e in errors if e.code() == KafkaError._SSL]
    assert failures, _codes(errors)
    assert "certificate verify failed" in failures[0].str()


def test_the_controller_listener_requires_a_client_certificate(secure_stack: SecureStack) -> None:
    node = secure_stack.stack.kafka().nodes[0]
    context = ssl.create_default_context(cafile=str(secure_stack.security.tls.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", node.controller_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        # TLS 1.3 finishes the client's side of the handshake first; the server's verdict on the missing
        # client certificate (a bad_certificate alert from the JVM) arrives on the first read.
        pytest.raises(ssl.SSLError, match=r"BAD_CERTIFICATE|CERTIFICATE_REQUIRED"),
    ):
        tls.recv(1)


# ------------------------------------------------------------------------------------------ provisioning
def test_provisioning_is_idempotent_and_drops_stale_grants(secure_stack: SecureStack) -> None:
    prefix, group = unique("pv"), unique("g")
    wide = secure_stack.settings.model_copy(update={"stack_partner_entities": ("task", "project")})
    first = secure_stack.security.provision(secure_stack.bootstrap, wide, prefix=prefix, consumer_group=group)
    assert first.topics_created
    assert first.acls_created > 0
    again = secure_stack.security.provision(secure_stack.bootstrap, wide, prefix=prefix, consumer_group=group)
    assert (again.topics_created, again.acls_created, again.acls_deleted) == ([], 0, 0)
    narrow = secure_stack.security.provision(
        secure_stack.bootstrap, secure_stack.settings, prefix=prefix, consumer_group=group
    )
    # Read and Describe on <prefix>.project.changes and on <prefix>.project.state
    assert (narrow.acls_created, narrow.acls_deleted) == (0, 4)
    error = _read_denial(secure_stack.librdkafka("partner"), f"{prefix}.project.changes")
    assert error is not None
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


# ------------------------------------------------------------------------------------------ rotation (last)
async def test_rotating_a_service_password_locks_out_the_old_one(secure_stack: SecureStack) -> None:
    old = secure_stack.librdkafka("gateway")
    secure_stack.stack.rotate_password("keel-gateway")
    errors, _ = _connection_errors(old, until=KafkaError._AUTHENTICATION)
    assert KafkaError._AUTHENTICATION in [e.code() for e in errors], _codes(errors)
    positions = await _write(secure_stack.service_settings("gateway"), secure_stack.topic("task"), b"after rotation")
    assert positions[0].offset >= 0


def _served_certificate(port: int, cafile: Path) -> str:
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


async def test_rotating_the_broker_certificate_needs_no_restart(secure_stack: SecureStack) -> None:
    kafka = secure_stack.stack.kafka()
    tls = secure_stack.security.tls
    pid = kafka.pids()[0]
    before = _served_certificate(kafka.nodes[0].client_port, tls.ca_cert)
    assert before == certificate_info(tls.broker_cert).sha256
    info = secure_stack.stack.rotate_certificate()
    assert info.sha256 != before
    # rotate_certificate returns only once the reload is in force on every listener.
    assert _served_certificate(kafka.nodes[0].client_port, tls.ca_cert) == info.sha256
    assert _served_certificate(kafka.nodes[0].proxied_port, tls.ca_cert) == info.sha256
    assert secure_stack.security.served_certificate(kafka.nodes[0].controller_port) == info.sha256
    assert kafka.pids()[0] == pid
    positions = await _write(secure_stack.service_settings("gateway"), secure_stack.topic("task"), b"new cert")
    assert positions[0].offset >= 0


def test_rotating_the_admin_password_restarts_the_broker(secure_stack: SecureStack) -> None:
    old = {"bootstrap.servers": secure_stack.bootstrap, **secure_stack.security.client_config()}
    pid = secure_stack.stack.kafka().pids()[0]
    result = keel(secure_stack, "stack", "rotate-password", "admin")
    assert result.returncode == 0, result.stderr
    kafka = secure_stack.stack.kafka()
    assert kafka.pids()[0] != pid
    assert kafka.is_healthy()  # the health check logs in with the new admin password
    errors, _ = _connection_errors(old, until=KafkaError._AUTHENTICATION)
    assert KafkaError._AUTHENTICATION in [e.code() for e in errors], _codes(errors)
    positions = asyncio.run(_write(secure_stack.service_settings("gateway"), secure_stack.topic("task"), b"ok"))
    assert positions[0].offset >= 0
