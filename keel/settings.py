"""Keel's settings: `KEEL_*` environment variables, then an optional `keel.toml`, then defaults."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
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

    # --- gateway and services
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8700
    projector_health_port: int = 8701
    dashboard_port: int = 8702
    log_level: str = "INFO"
    log_json: bool = True

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return Settings()
