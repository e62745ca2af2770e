"""Keel's settings: `KEEL_*` environment variables, then an optional `keel.toml`, then defaults."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "get_settings"]


def _default_home() -> Path:
    """Runtime folder of the local stack: `.keel/` in the working directory (git-ignored)."""
    return Path.cwd() / ".keel"


def _default_cache() -> Path:
    """Download cache shared by every clone: `$XDG_CACHE_HOME/keel` or `~/.cache/keel`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keel"


class Settings(BaseSettings):
    """Every tunable of Keel, read once per process."""

    model_config = SettingsConfigDict(
        env_prefix="KEEL_",
        env_nested_delimiter="__",
        toml_file="keel.toml",
        extra="ignore",
    )

    # --- endpoints a service uses (point these at an existing cluster to skip the local stack)
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7", description="Confluent-compatible schema registry URL"
    )
    database_url: str = Field("postgresql://keel:keel@127.0.0.1:55432/keel", description="PostgreSQL DSN")

    # --- Kafka client security (plaintext unless the secure stack or a real cluster says otherwise)
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: str | None = Field(None, description="e.g. SCRAM-SHA-512")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: Path | None = None

    # --- naming
    topic_prefix: str = Field("keel", description="Topics are named <prefix>.<entity>.changes")
    pg_schema: str = Field("keel", description="PostgreSQL schema holding projections and offsets")
    consumer_group: str = Field("keel-projector", description="Consumer group of the projector")

    # --- local stack (deploy/local)
    home: Path = Field(default_factory=_default_home, description="Runtime data of the local stack")
    cache_dir: Path = Field(default_factory=_default_cache, description="Download cache shared by clones")
    kafka_version: str = "4.1.1"
    log4j_version: str = "2.24.3"
    apicurio_version: str = "3.3.3"
    toxiproxy_version: str = "v2.12.0"
    kafka_port: int = 9092
    registry_port: int = 8081
    registry_management_port: int = 9001
    postgres_port: int = 55432
    toxiproxy_port: int = 8474
    java_home_registry: Path | None = Field(
        None, description="JDK for Apicurio 3.2+ (needs Java 21+); found under /usr/lib/jvm when unset"
    )
    stack_partner_entities: Annotated[tuple[str, ...], NoDecode] = Field(
        ("task",),
        description="Secure stack: entity types whose change topics the partner principal may read; env: comma list",
    )

    # --- gateway and services
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8700
    projector_health_host: str = Field(
        "127.0.0.1", description="Interface of the projector's /healthz, /readyz and /metrics (0.0.0.0 in containers)"
    )
    projector_health_port: int = 8701
    state_relay_health_port: int = Field(8703, description="Port of the state relay's /health, /ready and /metrics")
    dashboard_port: int = 8702
    log_level: str = "INFO"
    log_json: bool = True
    otel_exporter: str = Field("none", description="Span exporter: none, console, otlp or memory")
    otel_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint when otel_exporter=otlp")
    otel_record_spans: bool = Field(
        default=True, description="Projector: a span per record in the op's trace, besides the batch span"
    )
    otel_sample_ratio: float = Field(
        1.0, description="Share of traces recorded where they start; later hops follow (parent-based)"
    )

    # --- observability (deploy/observability; docs/observability.md)
    dashboard_host: str = "127.0.0.1"
    dashboard_refresh_s: float = Field(2.0, description="How often the dashboard reads PostgreSQL and Kafka")
    gateway_url: str | None = Field(
        None, description="A gateway's base URL for keel doctor and the dashboard (/healthz, /metrics)"
    )
    projector_url: str | None = Field(
        None, description="A projector's health endpoint base URL for keel doctor and the dashboard"
    )
    doctor_sample_s: float = Field(3.0, description="keel doctor: time between two lag readings (progress check)")
    doctor_dlq_window_s: float = Field(900.0, description="keel doctor: dead letters newer than this mean growth")

    # --- gateway (producers/gateway; docs/gateway-api.md)
    gateway_enrollment_secret: str | None = Field(
        None, description="Secret devices present to POST /v1/enroll; unset disables enrollment"
    )
    gateway_signing_key_file: Path | None = Field(
        None, description="Ed25519 PEM private key signing device tokens (shared by instances); generated when unset"
    )
    gateway_token_ttl_s: int = Field(900, description="Lifetime of device bearer tokens")
    gateway_max_body_bytes: int = Field(1_048_576, description="Largest request body (413 beyond)")
    gateway_max_batch_ops: int = Field(500, description="Most ops in one push (413 beyond)")
    gateway_max_op_bytes: int = Field(65_536, description="Largest single op (rejected on its own beyond)")
    gateway_device_rate_per_s: float = Field(500.0, description="Ops per second per device (429 beyond); 0 = off")
    gateway_device_burst: int = Field(2_000, description="Burst of ops a device may push at once")
    gateway_producer_buffer_bytes: int = Field(
        32 * 1024 * 1024, description="Bytes awaiting the broker's ack across pushes (429 beyond)"
    )
    gateway_produce_timeout_s: float = Field(20.0, description="Wait for the broker's ack before answering 503")
    gateway_pull_max_wait_s: float = Field(30.0, description="Longest long-poll of GET /v1/pull")
    gateway_outbox_poll_s: float = Field(0.25, description="How often the outbox position of watched tenants is read")
    gateway_outbox_signals: bool = Field(
        default=True, description="LISTEN for the projector's outbox notifications and wake waiting devices at once"
    )
    gateway_outbox_fallback_poll_s: float = Field(
        2.0, description="How often watched tenants are still polled while outbox notifications arrive"
    )
    gateway_stream_heartbeat_s: float = Field(15.0, description="Keep-alive comment interval of GET /v1/stream")
    gateway_pg_pool_size: int = Field(10, description="PostgreSQL connections of one gateway")
    gateway_register_schemas: bool = Field(default=True, description="Register missing subject versions at start")
    gateway_failpoints: str = Field(
        "", description="Test only: e.g. after-produce=kill (producers/gateway/failpoints.py)"
    )

    # --- security: tokens, signed ops, checkpoints, field keys (docs/security.md)
    gateway_token_keys_refresh_s: float = Field(
        30.0, description="How often a gateway re-reads the shared token signing keys (rotation reaches it then)"
    )
    gateway_body_timeout_s: float = Field(
        10.0, description="Longest time a client may take to send a request body (408 beyond: slow clients)"
    )
    require_signed_ops: bool = Field(
        default=False,
        description="Refuse unsigned ops from every device (else only devices that registered a key must sign)",
    )
    audit_checkpoint_key_file: Path | None = Field(
        None, description="Ed25519 PEM private key signing audit checkpoints (keel audit checkpoint)"
    )
    audit_checkpoint_interval_s: float = Field(
        0.0, description="Projector: write a signed checkpoint this often when a checkpoint key is set; 0 = never"
    )
    field_keys_file: Path | None = Field(
        None, description="Keyring (JSON) for the sensitive_fields of subjects.toml; unset = stored in clear"
    )

    # --- projector (consumers/, projections/; docs/projections.md)
    projector_batch_max_records: int = Field(500, description="Most records one batch (one transaction) holds")
    projector_stall_s: float = Field(60.0, description="Watchdog: restart a consumer with backlog but no progress")
    projector_failpoints: str = Field("", description="Test only: e.g. in-transaction=kill@3 (consumers/failpoints.py)")
    projector_pg_pool_size: int = Field(4, description="PostgreSQL connections of one projector")
    consumer_instance_id: str | None = Field(
        None, description="Static group membership (KIP-345): a restarted member takes its partitions back at once"
    )
    consumer_session_timeout_ms: int = Field(10_000, description="Group session timeout of the projector")
    consumer_max_partition_fetch_bytes: int = Field(
        131_072,
        ge=1_024,
        description=(
            "Most bytes fetched per partition at once: a consumer drains one partition's fetched records before "
            "the next partition's, so this bounds how long a deep backlog holds the other partitions back"
        ),
    )
    change_topic_partitions: int = Field(3, description="Partitions of change topics created by Keel")
    change_topic_replication: int = Field(1, description="Replication factor of topics created by Keel")
    registry_auto_register: bool = Field(
        default=False, description="Let Keel's own producers (overrides) register a missing schema version"
    )
    tombstone_retention_s: float = Field(7 * 86_400, description="Deleted entities keep full history this long")
    outbox_retention_s: float = Field(30 * 86_400, description="Feed rows older than this are pruned regardless")
    state_relay_poll_s: float = Field(0.5, description="State relay: wait this long after reading an empty page")
    state_relay_page_size: int = Field(500, description="State relay: feed rows read (and states published) per page")

    # --- schema migrations
    disabled_migrations: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Migration steps not to apply (rollback path); env: comma-separated step names"
    )

    @field_validator("disabled_migrations", "stack_partner_entities", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        """Accept `KEEL_DISABLED_MIGRATIONS=upcast_task_v2_v3,normalize_task` as well as a TOML list."""
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit arguments win, then the environment, then `keel.toml`."""
        del dotenv_settings
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )

    def topic_for(self, entity: str) -> str:
        """Name of the change topic of an entity type."""
        return f"{self.topic_prefix}.{entity}.changes"

    @property
    def dlq_topic(self) -> str:
        """Name of the dead-letter topic."""
        return f"{self.topic_prefix}.dlq"

    def kafka_security_environment(self) -> dict[str, str]:
        """The `KEEL_KAFKA_*` security variables of these settings, for a child process (PLAINTEXT said outright).

        A child started with only the endpoints would fall back to PLAINTEXT against a SASL_SSL listener and
        never connect; every tool that spawns `keel run …` passes these along with the endpoints.
        """
        env = {"KEEL_KAFKA_SECURITY_PROTOCOL": self.kafka_security_protocol}
        optional = {
            "KEEL_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "KEEL_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "KEEL_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
            "KEEL_KAFKA_SSL_CAFILE": str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
        }
        env.update({key: value for key, value in optional.items() if value is not None})
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return Settings()
