"""Apicurio Registry from its Maven `all` tarball, serving the Confluent-compatible API.

Apicurio specifics stay here: product code talks to any Confluent-API registry.
- Apicurio's default compatibility is NONE, so the global level is set explicitly after start.
- Lookups compare raw schema text unless APICURIO_CCOMPAT_USE_CANONICAL_HASH=true.
- 3.2+ needs Java 21+ and serves health on a separate management port.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from deploy.local.processes import ManagedProcess

__all__ = ["RegistryServer"]

GLOBAL_COMPATIBILITY = "BACKWARD"


class RegistryServer:
    """An Apicurio Registry process storing schemas in the stack's PostgreSQL."""

    def __init__(
        self,
        folder: Path,
        app_home: Path,
        launch_jar: Path,
        java: Path,
        *,
        port: int,
        management_port: int,
        postgres_port: int,
        heap_mb: int = 512,
    ) -> None:
        self.folder = folder
        self.app_home = app_home
        self.launch_jar = launch_jar
        self.java = java
        self.port = port
        self.management_port = management_port
        self.postgres_port = postgres_port
        self.heap_mb = heap_mb
        self.process = ManagedProcess("registry", folder / "registry.pid", folder / "registry.log")

    @property
    def url(self) -> str:
        """The Confluent-compatible API root."""
        return f"http://127.0.0.1:{self.port}/apis/ccompat/v7"

    def start(self) -> None:
        """Start the registry unless it runs."""
        if self.process.is_alive():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {
            "QUARKUS_HTTP_HOST": "127.0.0.1",
            "QUARKUS_HTTP_PORT": str(self.port),
            "QUARKUS_MANAGEMENT_HOST": "127.0.0.1",
            "QUARKUS_MANAGEMENT_PORT": str(self.management_port),
            "APICURIO_STORAGE_KIND": "sql",
            "APICURIO_STORAGE_SQL_KIND": "postgresql",
            "APICURIO_DATASOURCE_URL": f"jdbc:postgresql://127.0.0.1:{self.postgres_port}/apicurio",
            "APICURIO_DATASOURCE_USERNAME": "keel",
            "APICURIO_DATASOURCE_PASSWORD": "keel",
            "APICURIO_CCOMPAT_USE_CANONICAL_HASH": "true",
            # 2.x/3.0 names of the same settings, harmless on 3.3.
            "REGISTRY_CCOMPAT_USE_CANONICAL_HASH": "true",
            "QUARKUS_LOG_LEVEL": "INFO",
        }
        self.process.start(
            [str(self.java), "-Xms128m", f"-Xmx{self.heap_mb}m", "-jar", str(self.launch_jar)],
            env=env,
            cwd=self.launch_jar.parent,
        )

    def stop(self) -> bool:
        """Stop the registry if we started it."""
        return self.process.stop(timeout_s=20)

    def is_healthy(self) -> bool:
        """True when the ccompat API answers."""
        if not self.process.is_alive():
            return False
        try:
            response = httpx.get(f"{self.url}/config", timeout=3.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def set_global_compatibility(self, level: str = GLOBAL_COMPATIBILITY) -> None:
        """Set the global compatibility level explicitly (Apicurio defaults to NONE, Confluent to BACKWARD)."""
        response = httpx.put(f"{self.url}/config", json={"compatibility": level}, timeout=10.0)
        response.raise_for_status()

    def wait_healthy(self, timeout_s: float) -> bool:
        """Poll until the API answers, then set the global level; False on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_healthy():
                self.set_global_compatibility()
                return True
            if not self.process.is_alive():
                return False
            time.sleep(1.0)
        return False
