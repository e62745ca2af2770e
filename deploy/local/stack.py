"""`keel stack`: bring the local stack up, down, and report its health.

Layout of the runtime folder (settings.home, git-ignored):
    stack.json        what `up` was asked for (brokers, toxiproxy, secure)
    kafka/            single-node cluster (or kafka3/ for three nodes): configs, data, logs, pid files
    kafka-secure/     the same for `up --secure` (kafka3-secure/): TLS + SASL/SCRAM + ACLs, never mixed
                      with the plaintext cluster's data
    tls/              secure mode: local CA and broker certificate (deploy/local/certificates.py)
    secrets/          secure mode: credentials.json, every principal's and role's password (0600)
    postgres/         cluster data (or /var/tmp/keel-postgres-<hash> when `postgres` cannot reach it)
    registry/         Apicurio log and pid file
    toxiproxy/        Toxiproxy log and pid file
Downloads live in settings.cache_dir (~/.cache/keel) so every clone reuses them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.local.certificates import CertificateInfo, issue_broker_certificate
from deploy.local.credentials import new_password
from deploy.local.database_roles import RoleNames, RolesReport, provision_roles, role_dsn, set_role_password
from deploy.local.downloads import (
    apicurio_launch_jar,
    ensure_apicurio,
    ensure_kafka_libs,
    ensure_toxiproxy,
    find_java,
)
from deploy.local.kafka_cluster import KafkaCluster
from deploy.local.postgres_server import PostgresServer
from deploy.local.registry_server import RegistryServer
from deploy.local.secure_kafka import ProvisionReport, SecureKafka
from deploy.local.toxiproxy_server import ToxiproxyServer
from keel.errors import ConfigurationError, KeelError
from keel.settings import Settings

__all__ = ["ServiceStatus", "Stack", "StackStartError"]

# Apicurio 3.2+ needs Java 21+; 3.0.9 is the fallback that runs on Java 17.
_APICURIO_FALLBACK = "3.0.9"
POSTGRES_SECTION = "postgres"  # section of the credentials file holding the service roles' passwords


class StackStartError(KeelError):
    """A service did not become ready; names the service and its log."""

    def __init__(self, service: str, log: Path, detail: str) -> None:
        super().__init__(f"{service} did not become ready ({detail}); see its log: {log}")
        self.service = service
        self.log = log


@dataclass(frozen=True)
class ServiceStatus:
    """What `keel stack status --json` prints per service."""

    name: str
    healthy: bool
    endpoint: str
    pid: int | None
    log: str
    extra: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        record: dict[str, Any] = {
            "name": self.name,
            "healthy": self.healthy,
            "endpoint": self.endpoint,
            "pid": self.pid,
            "log": self.log,
        }
        if self.extra:
            record.update(self.extra)
        return record


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


class Stack:
    """The local stack described by `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home
        self.state_file = self.home / "stack.json"

    # ------------------------------------------------------------------ state
    def _read_state(self) -> dict[str, Any]:
        if self.state_file.exists():
            state: dict[str, Any] = json.loads(self.state_file.read_text())
            return state
        return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def is_secure(self) -> bool:
        """Whether the recorded stack is the secure one (`up --secure`)."""
        return bool(self._read_state().get("secure", False))

    # ------------------------------------------------------------------ components
    def kafka(self, brokers: int | None = None, *, secure: bool | None = None) -> KafkaCluster:
        """The Kafka cluster of this stack (brokers and security from the recorded state unless given)."""
        state = self._read_state()
        count = brokers or int(state.get("brokers", 1))
        chosen = bool(state.get("secure", False)) if secure is None else secure
        folder = self.home / (("kafka" if count == 1 else "kafka3") + ("-secure" if chosen else ""))
        libs = self.settings.cache_dir / f"kafka-{self.settings.kafka_version}" / "libs"
        security = self.security() if chosen else None
        return KafkaCluster(folder, libs, brokers=count, base_port=self.settings.kafka_port, security=security)

    def security(self) -> SecureKafka:
        """Certificates, credentials and access plan of the secure mode (files are created by `up --secure`)."""
        return SecureKafka(self.home)

    def postgres(self, *, secure: bool | None = None) -> PostgresServer:
        """The PostgreSQL server of this stack (passwords required in secure mode)."""
        chosen = self.is_secure() if secure is None else secure
        return PostgresServer(self.home / "postgres", self.settings.postgres_port, require_passwords=chosen)

    def _registry_runtime(self) -> tuple[str, Path]:
        wanted = self.settings.apicurio_version
        major_minor = tuple(int(x) for x in wanted.split(".")[:2])
        if major_minor >= (3, 2):
            java = find_java(21, self.settings.java_home_registry)
            if java is not None:
                return wanted, java.java
            fallback = find_java(17)
            if fallback is None:
                raise ConfigurationError("no Java 17+ found for Apicurio Registry")
            return _APICURIO_FALLBACK, fallback.java
        java = find_java(17, self.settings.java_home_registry)
        if java is None:
            raise ConfigurationError("no Java 17+ found for Apicurio Registry")
        return wanted, java.java

    def registry(self) -> RegistryServer:
        """The Apicurio Registry of this stack (downloads nothing; see `up`)."""
        version, java = self._registry_runtime()
        app_home = self.settings.cache_dir / f"apicurio-{version}"
        try:
            jar = apicurio_launch_jar(app_home)
        except ConfigurationError:
            jar = app_home / "quarkus-run.jar"
        return RegistryServer(
            self.home / "registry",
            app_home,
            jar,
            java,
            port=self.settings.registry_port,
            management_port=self.settings.registry_management_port,
            postgres_port=self.settings.postgres_port,
        )

    def toxiproxy(self) -> ToxiproxyServer:
        """The Toxiproxy server of this stack."""
        binary = self.settings.cache_dir / "bin" / f"toxiproxy-server-{self.settings.toxiproxy_version}"
        return ToxiproxyServer(self.home / "toxiproxy", binary, self.settings.toxiproxy_port)

    # ------------------------------------------------------------------ commands
    def download(self, *, with_toxiproxy: bool, progress: Progress = _quiet) -> None:
        """Fetch every program the stack needs into the shared cache."""
        log = self.home / "downloads.log"
        cache = self.settings.cache_dir
        progress(f"Kafka {self.settings.kafka_version} jars (Maven Central)")
        ensure_kafka_libs(cache, self.settings.kafka_version, self.settings.log4j_version, log)
        version, _ = self._registry_runtime()
        progress(f"Apicurio Registry {version} (Maven Central, ~160 MB the first time)")
        ensure_apicurio(cache, version, log)
        if with_toxiproxy:
            progress(f"Toxiproxy {self.settings.toxiproxy_version} (Go module proxy)")
            ensure_toxiproxy(cache, self.settings.toxiproxy_version, log)

    def up(
        self,
        *,
        brokers: int = 1,
        with_toxiproxy: bool = False,
        secure: bool = False,
        progress: Progress = _quiet,
        timeout_s: float = 180.0,
    ) -> None:
        """Start whatever is not running and wait until all of it is ready; a second call is a no-op.

        `secure`: TLS + SASL/SCRAM listeners, ACLs per principal, PostgreSQL passwords and service roles
        (docs/security.md); the mode is recorded and cannot change while the stack runs.
        """
        state = self._read_state()
        self._raise_if_running_otherwise(state, brokers=brokers, secure=secure)
        with_toxiproxy = with_toxiproxy or bool(state.get("toxiproxy"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.download(with_toxiproxy=with_toxiproxy, progress=progress)
        record: dict[str, Any] = {"brokers": brokers, "toxiproxy": with_toxiproxy}
        if secure:
            record["secure"] = True
        self._write_state(record)

        postgres = self.postgres(secure=secure)
        progress(f"PostgreSQL on 127.0.0.1:{postgres.port}")
        try:
            postgres.start()
        except ConfigurationError as error:
            raise StackStartError("postgres", postgres.log_file, str(error)) from error
        if not postgres.wait_healthy(timeout_s):
            raise StackStartError("postgres", postgres.log_file, f"not accepting connections after {timeout_s:.0f}s")

        kafka = self.kafka(brokers, secure=secure)
        registry = self.registry()
        mode = ", SASL_SSL" if secure else ""
        progress(f"Kafka ({brokers} node{'s' if brokers > 1 else ''}, KRaft{mode}) on {kafka.bootstrap}")
        kafka.start()
        progress(f"Apicurio Registry on {registry.url}")
        registry.start()
        if not kafka.wait_healthy(timeout_s):
            raise StackStartError("kafka", kafka.log_files[0], f"not serving metadata after {timeout_s:.0f}s")
        if not registry.wait_healthy(timeout_s):
            raise StackStartError("registry", registry.process.log_file, f"API not answering after {timeout_s:.0f}s")
        if secure:
            progress("Kafka principals, topics and ACLs; PostgreSQL service roles")
            self._provision_secure(kafka, postgres)

        if with_toxiproxy:
            toxiproxy = self.toxiproxy()
            progress(f"Toxiproxy on {toxiproxy.url}")
            toxiproxy.start()
            if not toxiproxy.wait_healthy(30):
                raise StackStartError("toxiproxy", toxiproxy.process.log_file, "API not answering after 30s")
            for node in kafka.nodes:
                toxiproxy.ensure_proxy(
                    f"kafka-{node.node_id}", f"127.0.0.1:{node.proxy_port}", f"127.0.0.1:{node.proxied_port}"
                )
            toxiproxy.ensure_proxy(
                "postgres", f"127.0.0.1:{self.settings.postgres_port + 1}", f"127.0.0.1:{self.settings.postgres_port}"
            )
            toxiproxy.ensure_proxy(
                "registry", f"127.0.0.1:{self.settings.registry_port + 2}", f"127.0.0.1:{self.settings.registry_port}"
            )

    def _raise_if_running_otherwise(self, state: dict[str, Any], *, brokers: int, secure: bool) -> None:
        """ConfigurationError when the running stack has another broker count or security mode."""
        running_brokers = int(state.get("brokers", brokers))
        if not state or self.kafka(running_brokers).pids() == [None] * running_brokers:
            return
        if running_brokers != brokers:
            raise ConfigurationError(
                f"the stack runs {running_brokers} broker(s); `keel stack down` before asking for {brokers}"
            )
        running_secure = bool(state.get("secure", False))
        if running_secure != secure:
            mode = "secure" if running_secure else "plaintext"
            raise ConfigurationError(
                f"the stack runs {mode}; `keel stack down` before asking for {'--secure' if secure else 'plaintext'}"
            )

    def _provision_secure(self, kafka: KafkaCluster, postgres: PostgresServer) -> None:
        """Principals, topics and ACLs on Kafka; service roles in PostgreSQL (StackStartError on failure)."""
        from confluent_kafka import KafkaException

        try:
            self.provision_acls()
        except (KeelError, KafkaException) as error:
            raise StackStartError("kafka", kafka.log_files[0], f"provisioning principals and ACLs: {error}") from error
        try:
            self.provision_roles()
        except (KeelError, OSError) as error:
            raise StackStartError("postgres", postgres.log_file, f"provisioning service roles: {error}") from error

    def purge(self) -> list[Path]:
        """Delete the runtime data of a stopped stack (broker logs, database files); downloads stay."""
        removed: list[Path] = []
        postgres_folder = self.postgres().folder
        for folder in (postgres_folder, self.home):
            if folder.exists():
                shutil.rmtree(folder)
                removed.append(folder)
        return removed

    def down(self) -> list[str]:
        """Stop every process the stack started (by pid file), services first, PostgreSQL last."""
        stopped: list[str] = []
        if self.toxiproxy().stop():
            stopped.append("toxiproxy")
        try:
            if self.registry().stop():
                stopped.append("registry")
        except ConfigurationError:
            pass
        for count in (1, 3):
            for secure in (False, True):
                stopped.extend(self.kafka(count, secure=secure).stop())
        if self.postgres().stop():
            stopped.append("postgres")
        return stopped

    def status(self) -> dict[str, ServiceStatus]:
        """Health, endpoint, pid and log of each service (toxiproxy only when running or requested)."""
        state = self._read_state()
        kafka = self.kafka()
        postgres = self.postgres()
        statuses: dict[str, ServiceStatus] = {}
        pids = kafka.pids()
        security: dict[str, Any] = (
            self.security().describe()
            if kafka.security is not None
            else {"secure": False, "security_protocol": "PLAINTEXT"}
        )
        statuses["kafka"] = ServiceStatus(
            "kafka",
            kafka.is_healthy(),
            kafka.bootstrap,
            pids[0],
            str(kafka.log_files[0]),
            {
                **security,
                "brokers": kafka.brokers,
                "nodes": [
                    {
                        "node_id": n.node_id,
                        "endpoint": n.endpoint,
                        "pid": p,
                        "log": str(n.process.log_file),
                        "proxied_endpoint": n.proxied_endpoint,
                    }
                    for n, p in zip(kafka.nodes, pids, strict=True)
                ],
            },
        )
        try:
            registry = self.registry()
            statuses["registry"] = ServiceStatus(
                "registry", registry.is_healthy(), registry.url, registry.process.pid(), str(registry.process.log_file)
            )
        except ConfigurationError as error:
            statuses["registry"] = ServiceStatus(
                "registry", healthy=False, endpoint="", pid=None, log="", extra={"error": str(error)}
            )
        statuses["postgres"] = ServiceStatus(
            "postgres",
            postgres.is_healthy(),
            postgres.dsn,
            postgres.process.pid(),
            str(postgres.log_file),
            {"password_auth": True, "roles": RoleNames().by_kind()} if postgres.require_passwords else None,
        )
        toxiproxy = self.toxiproxy()
        if state.get("toxiproxy") or toxiproxy.process.is_alive():
            statuses["toxiproxy"] = ServiceStatus(
                "toxiproxy",
                toxiproxy.is_healthy(),
                toxiproxy.url,
                toxiproxy.process.pid(),
                str(toxiproxy.process.log_file),
            )
        return statuses

    def log_path(self, service: str) -> Path:
        """The log file of a service (kafka means node 1; kafka-2, kafka-3 for the others)."""
        if service.startswith("kafka"):
            kafka = self.kafka()
            index = int(service.split("-", 1)[1]) - 1 if "-" in service else 0
            return kafka.log_files[index]
        paths = {
            "postgres": lambda: self.postgres().log_file,
            "registry": lambda: self.registry().process.log_file,
            "toxiproxy": lambda: self.toxiproxy().process.log_file,
            "downloads": lambda: self.home / "downloads.log",
        }
        if service not in paths:
            raise ConfigurationError(f"unknown service {service!r}; one of kafka, kafka-N, {', '.join(paths)}")
        return paths[service]()

    # ------------------------------------------------------------------ secure mode
    def _raise_unless_secure(self) -> None:
        if not self.is_secure():
            raise ConfigurationError("the stack does not run in secure mode; `keel stack up --secure` first")

    def provision_acls(self, *, prefix: str | None = None, consumer_group: str | None = None) -> ProvisionReport:
        """SCRAM users, topics and ACLs for a topic prefix (settings' prefix and group unless given)."""
        self._raise_unless_secure()
        return self.security().provision(
            self.kafka().bootstrap, self.settings, prefix=prefix, consumer_group=consumer_group
        )

    def role_passwords(self, names: RoleNames | None = None) -> dict[str, str]:
        """Role name → password of the PostgreSQL service roles (generated on first use)."""
        roles = (names or RoleNames()).by_kind().values()
        return self.security().credentials.ensure(POSTGRES_SECTION, roles)

    def provision_roles(self, schema: str | None = None, names: RoleNames | None = None) -> RolesReport:
        """Migrate `schema` (settings' schema unless given) and grant the service roles their privileges."""
        import asyncio

        self._raise_unless_secure()
        chosen = names or RoleNames()
        owner = self.postgres().dsn
        return asyncio.run(
            provision_roles(owner, schema or self.settings.pg_schema, self.role_passwords(chosen), names=chosen)
        )

    def role_dsns(self, names: RoleNames | None = None) -> dict[str, str]:
        """Kind → DSN of each PostgreSQL service role."""
        chosen = names or RoleNames()
        passwords = self.role_passwords(chosen)
        owner = self.postgres().dsn
        return {kind: role_dsn(owner, role, passwords[role]) for kind, role in chosen.by_kind().items()}

    def rotate_password(self, principal: str, *, timeout_s: float = 120.0) -> None:
        """New password for a Kafka principal or PostgreSQL service role.

        Kafka admin: also rewrite the node configs and restart each node (its inter-broker login).
        """
        self._raise_unless_secure()
        if principal in RoleNames().by_kind().values():
            import asyncio

            password = new_password()
            asyncio.run(set_role_password(self.postgres().dsn, principal, password))
            self.security().credentials.replace(POSTGRES_SECTION, principal, password)
            return
        security = self.security()
        kafka = self.kafka()
        security.rotate_password(kafka.bootstrap, principal)
        if principal != security.principals.admin:
            return
        # The inter-broker listener logs in with the admin password from server.properties: rewrite it and
        # restart node by node, waiting for the cluster to be whole again before the next one.
        kafka.prepare()
        for node in kafka.nodes:
            node.process.stop(timeout_s=30)
            kafka.start_node(node)
            if not kafka.wait_healthy(timeout_s):
                raise StackStartError(f"kafka-{node.node_id}", node.process.log_file, "not healthy after restart")

    def rotate_certificate(self) -> CertificateInfo:
        """A new broker key and certificate from the stack's CA, in force on every listener without restart."""
        self._raise_unless_secure()
        security = self.security()
        kafka = self.kafka()
        info = issue_broker_certificate(security.tls)
        security.reload_keystores(kafka.bootstrap, [node.node_id for node in kafka.nodes])
        ports = [port for n in kafka.nodes for port in (n.client_port, n.proxied_port, n.controller_port)]
        security.wait_for_certificate(ports, info.sha256)
        return info
