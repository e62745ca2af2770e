"""The secure local Kafka: TLS listeners, SASL/SCRAM-SHA-512 principals, the StandardAuthorizer and ACLs.

Listeners of each node in secure mode (same ports as the plaintext stack):
    SASL_SSL    client_port    clients and inter-broker traffic; SCRAM-SHA-512 over TLS
    PROXIED     proxied_port   the same, advertised at the Toxiproxy port in front of it
    CONTROLLER  controller_port  KRaft controller traffic; TLS with client certificates (mutual TLS)

The controller listener uses mutual TLS rather than plaintext: the authorizer checks controller requests
too, and a plaintext connection is `User:ANONYMOUS`, which would have to be a super user — letting anyone
who reaches the port create ACLs. With mutual TLS the broker authenticates as the subject of its own
certificate, which is the only other super user besides `admin`.

The admin's SCRAM credential is written into the metadata log when the storage is formatted (KIP-900:
the broker needs it to authenticate to itself before any Admin API call can work); every other
principal's credential is created through the Admin API (`AlterUserScramCredentials`, KIP-554).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.acls import AccessPlan, Principals, apply_plan, keel_access_plan
from deploy.local.certificates import BROKER_COMMON_NAME, TlsFiles, certificate_info, ensure_tls_files
from deploy.local.credentials import CredentialStore, new_password
from deploy.local.kafka_cluster import KafkaNode
from keel.errors import ConfigurationError, ServiceUnavailableError
from keel.settings import Settings

__all__ = [
    "KAFKA_SECTION",
    "SASL_MECHANISM",
    "SECURITY_PROTOCOL",
    "ProvisionReport",
    "SecureKafka",
]

SECURITY_PROTOCOL = "SASL_SSL"
SASL_MECHANISM = "SCRAM-SHA-512"
KAFKA_SECTION = "kafka"  # section of the credentials file
_SCRAM_ITERATIONS = 8192  # Kafka's minimum is 4096; each authentication costs this many HMAC rounds
_BROKER_PRINCIPAL = f"User:CN={BROKER_COMMON_NAME},O=Keel local stack"
_SECURE_LISTENERS = ("sasl_ssl", "proxied", "controller")
_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


@dataclass(frozen=True)
class ProvisionReport:
    """What provisioning one topic prefix changed."""

    prefix: str
    users_created: list[str] = field(default_factory=list)
    topics_created: list[str] = field(default_factory=list)
    acls_created: int = 0
    acls_deleted: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "prefix": self.prefix,
            "users_created": self.users_created,
            "topics_created": self.topics_created,
            "acls_created": self.acls_created,
            "acls_deleted": self.acls_deleted,
        }


class SecureKafka:
    """TLS material, SCRAM credentials and access plan of the secure stack whose runtime folder is `home`."""

    def __init__(self, home: Path, principals: Principals | None = None) -> None:
        self.home = home
        self.principals = principals or Principals()
        self.tls = TlsFiles(home / "tls")
        self.credentials = CredentialStore.in_home(home)

    # ------------------------------------------------------------------ the ClusterSecurity protocol
    def prepare(self) -> None:
        """Create the CA, the broker certificate and every principal's password unless they exist."""
        ensure_tls_files(self.tls.folder)
        self.credentials.ensure(KAFKA_SECTION, self.principals.by_role().values())

    def password(self, principal: str) -> str:
        """The stored password of a principal."""
        return self.credentials.password(KAFKA_SECTION, principal)

    def server_properties(self, node: KafkaNode) -> dict[str, str]:
        """Properties that turn a plaintext node into a secure one (they override the plaintext ones)."""
        admin = self.principals.admin
        return {
            "listeners": (
                f"SASL_SSL://127.0.0.1:{node.client_port},CONTROLLER://127.0.0.1:{node.controller_port},"
                f"PROXIED://127.0.0.1:{node.proxied_port}"
            ),
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{node.client_port},PROXIED://127.0.0.1:{node.proxy_port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL,PROXIED:SASL_SSL",
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
            # The broker's own client side of the inter-broker listener logs in as admin.
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                f'{_SCRAM_MODULE} required username="{admin}" password="{self.password(admin)}";'
            ),
            # A SASL listener needs a JAAS entry even when it only verifies (SCRAM keeps no server secret).
            "listener.name.proxied.scram-sha-512.sasl.jaas.config": f"{_SCRAM_MODULE} required;",
            "listener.name.controller.ssl.client.auth": "required",
            # PEM stores (KIP-651): no JKS/PKCS12 conversion, the files are what `cryptography` wrote.
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.broker_keystore.resolve()),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca_cert.resolve()),
            "ssl.endpoint.identification.algorithm": "https",
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            "authorizer.class.name": _AUTHORIZER,
            "super.users": f"User:{admin};{_BROKER_PRINCIPAL}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def format_arguments(self) -> list[str]:
        """Extra `StorageTool format` arguments: the admin's SCRAM credential (KIP-900)."""
        admin = self.principals.admin
        return [
            "--add-scram",
            f"{SASL_MECHANISM}=[name={admin},iterations={_SCRAM_ITERATIONS},password={self.password(admin)}]",
        ]

    def secrets(self) -> list[str]:
        """Strings never to write into a log (the admin password appears on the format command line)."""
        return [self.password(self.principals.admin)]

    def client_config(self, principal: str | None = None) -> dict[str, str]:
        """Security settings (librdkafka names) of a principal, admin by default; no bootstrap servers."""
        user = principal or self.principals.admin
        return {
            "security.protocol": SECURITY_PROTOCOL,
            "sasl.mechanism": SASL_MECHANISM,
            "sasl.username": user,
            "sasl.password": self.password(user),
            "ssl.ca.location": str(self.tls.ca_cert.resolve()),
            "ssl.endpoint.identification.algorithm": "https",
        }

    # ------------------------------------------------------------------ services
    def service_env(self, role: str, bootstrap: str) -> dict[str, str]:
        """`KEEL_KAFKA_*` variables that point a service (gateway, projector, operator, partner) at this stack."""
        principal = self._principal_of(role)
        return {
            "KEEL_KAFKA_BOOTSTRAP": bootstrap,
            "KEEL_KAFKA_SECURITY_PROTOCOL": SECURITY_PROTOCOL,
            "KEEL_KAFKA_SASL_MECHANISM": SASL_MECHANISM,
            "KEEL_KAFKA_SASL_USERNAME": principal,
            "KEEL_KAFKA_SASL_PASSWORD": self.password(principal),
            "KEEL_KAFKA_SSL_CAFILE": str(self.tls.ca_cert.resolve()),
        }

    def service_settings(self, settings: Settings, role: str, bootstrap: str) -> Settings:
        """`settings` with the Kafka security fields of one role filled in."""
        principal = self._principal_of(role)
        return settings.model_copy(
            update={
                "kafka_bootstrap": bootstrap,
                "kafka_security_protocol": SECURITY_PROTOCOL,
                "kafka_sasl_mechanism": SASL_MECHANISM,
                "kafka_sasl_username": principal,
                "kafka_sasl_password": self.password(principal),
                "kafka_ssl_cafile": self.tls.ca_cert.resolve(),
            }
        )

    def _principal_of(self, role: str) -> str:
        roles = self.principals.by_role()
        if role not in roles:
            raise ConfigurationError(f"unknown role {role!r}; one of {', '.join(roles)}")
        return roles[role]

    # ------------------------------------------------------------------ provisioning (Admin API, as admin)
    def admin_client(self, bootstrap: str) -> Any:
        """A confluent-kafka AdminClient logged in as the super user."""
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000, **self.client_config()})

    def ensure_users(self, admin: Any, *, timeout_s: float = 30.0) -> list[str]:
        """Create the SCRAM credential of every service principal the broker does not know yet."""
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        names = self.principals.services()
        known = _users_with_credentials(admin, names, timeout_s)
        missing = [name for name in names if name not in known]
        if missing:
            info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, _SCRAM_ITERATIONS)
            upserts = [UserScramCredentialUpsertion(n, info, self.password(n).encode()) for n in missing]
            for future in admin.alter_user_scram_credentials(upserts).values():
                future.result(timeout=timeout_s)
        return missing

    def access_plan(
        self, settings: Settings, *, prefix: str | None = None, consumer_group: str | None = None
    ) -> AccessPlan:
        """The grants for a topic prefix (settings' prefix and group unless given)."""
        from schemas.catalog import default_catalog

        return keel_access_plan(
            prefix=prefix or settings.topic_prefix,
            entities=default_catalog().entities(),
            consumer_group=consumer_group or settings.consumer_group,
            partner_entities=settings.stack_partner_entities,
            principals=self.principals,
        )

    def provision(
        self,
        bootstrap: str,
        settings: Settings,
        *,
        prefix: str | None = None,
        consumer_group: str | None = None,
        timeout_s: float = 60.0,
    ) -> ProvisionReport:
        """Users, topics (change topics and DLQ) and ACLs for one prefix; idempotent."""
        chosen = prefix or settings.topic_prefix
        scoped = settings.model_copy(update={"topic_prefix": chosen})
        plan = self.access_plan(scoped, consumer_group=consumer_group)
        admin = self.admin_client(bootstrap)
        users = self.ensure_users(admin, timeout_s=timeout_s)
        topics = _ensure_topics(admin, scoped, timeout_s)
        counts = apply_plan(admin, plan, self.principals.services(), timeout_s=timeout_s)
        return ProvisionReport(chosen, users, topics, counts["created"], counts["deleted"])

    def rotate_password(self, bootstrap: str, principal: str, *, timeout_s: float = 30.0) -> str:
        """Give a principal a new random password on the broker, then store it; the new password.

        Sessions already authenticated stay open (SCRAM is checked at connect time); every new connection
        needs the new password, so restart the service with it right after (docs/security.md). For the
        admin the caller also rewrites the nodes' configs and restarts them (`Stack.rotate_password`).
        """
        if principal not in self.principals.by_role().values():
            raise ConfigurationError(f"{principal!r} is not a principal of this stack")
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        password = new_password()
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, _SCRAM_ITERATIONS)
        admin = self.admin_client(bootstrap)
        upsert = UserScramCredentialUpsertion(principal, info, password.encode())
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=timeout_s)
        self.credentials.replace(KAFKA_SECTION, principal, password)
        return password

    def reload_keystores(self, bootstrap: str, node_ids: Sequence[int], *, timeout_s: float = 30.0) -> None:
        """Make running nodes re-read the keystore file on every listener, without a restart (KIP-226).

        Kafka reloads a file-based keystore when its location is altered, even to the same path, as long as
        the file changed; it refuses a certificate whose subject or SANs differ from the running one.
        """
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

        location = str(self.tls.broker_keystore.resolve())
        admin = self.admin_client(bootstrap)
        for node_id in node_ids:
            entries = [
                ConfigEntry(
                    f"listener.name.{listener}.ssl.keystore.location",
                    location,
                    incremental_operation=AlterConfigOpType.SET,
                )
                for listener in _SECURE_LISTENERS
            ]
            resource = ConfigResource(ResourceType.BROKER, str(node_id), incremental_configs=entries)
            for future in admin.incremental_alter_configs([resource]).values():
                future.result(timeout=timeout_s)

    def served_certificate(self, port: int, *, timeout_s: float = 5.0) -> str:
        """sha256 of the certificate a listener on 127.0.0.1:`port` presents (verified against the stack CA).

        The probe presents the broker's own certificate, so the mutual-TLS controller listener answers too.
        """
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        context.load_cert_chain(self.tls.broker_keystore)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        if der is None:
            raise ServiceUnavailableError("kafka", f"127.0.0.1:{port} presented no certificate")
        return hashlib.sha256(der).hexdigest()

    def wait_for_certificate(self, ports: Sequence[int], sha256: str, *, timeout_s: float = 30.0) -> None:
        """Return once every listener port serves the certificate with this fingerprint (reloads are async)."""
        deadline = time.monotonic() + timeout_s
        for port in ports:
            while True:
                try:
                    if self.served_certificate(port) == sha256:
                        break
                except (OSError, ssl.SSLError):
                    pass  # a listener mid-reload may drop the probe; try again
                if time.monotonic() > deadline:
                    raise ServiceUnavailableError("kafka", f"127.0.0.1:{port} still serves the old certificate")
                time.sleep(0.2)

    def describe(self) -> dict[str, Any]:
        """What `keel stack status --json` shows about security (no secrets)."""
        record: dict[str, Any] = {
            "secure": True,
            "security_protocol": SECURITY_PROTOCOL,
            "sasl_mechanism": SASL_MECHANISM,
            "ca_file": str(self.tls.ca_cert.resolve()),
            "credentials_file": str(self.credentials.path.resolve()),
            "principals": self.principals.by_role(),
        }
        if self.tls.broker_cert.exists():
            info = certificate_info(self.tls.broker_cert)
            record["broker_certificate"] = {"not_after": info.not_after.isoformat(), "sha256": info.sha256}
        return record


def _users_with_credentials(admin: Any, names: Sequence[str], timeout_s: float) -> set[str]:
    """Which of `names` have a SCRAM credential on the broker (unknown users come back as errors)."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            described = admin.describe_user_scram_credentials(list(names))
            break
        except KafkaException as error:  # the controller may still be electing itself right after start
            if time.monotonic() > deadline:
                raise ServiceUnavailableError("kafka", f"describe SCRAM users: {error}") from error
            time.sleep(0.5)
    known: set[str] = set()
    for name, future in described.items():
        try:
            description = future.result(timeout=timeout_s)
        except KafkaException:
            continue  # RESOURCE_NOT_FOUND: no credential for this user yet
        if description.scram_credential_infos:
            known.add(name)
    return known


def _ensure_topics(admin: Any, settings: Settings, timeout_s: float) -> list[str]:
    """Create the change topics and the DLQ of `settings` that are missing (as admin: services may not)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    from consumers.projector import topic_specs

    existing = set(admin.list_topics(timeout=timeout_s).topics)
    specs = [spec for spec in topic_specs(settings) if spec.name not in existing]
    if not specs:
        return []
    created: list[str] = []
    requests = [NewTopic(s.name, s.partitions, s.replication, config=dict(s.config)) for s in specs]
    for name, future in admin.create_topics(requests).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
