"""Keel's services as child processes for the bench (`keel run gateway`, `keel run projector`), with gauges.

Each child gets the stage's `KEEL_*` environment (its own topic prefix, schema, group and ports), logs to
a file under `reports/bench-logs/`, and counts as started once its health endpoint answers 200. `rss_bytes`
and `cpu_seconds` read the child's resident memory and CPU time (psutil), which the memory stage samples
and the end-to-end stage uses to split a run's CPU time between the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil

from keel.errors import ServiceUnavailableError
from keel.settings import Settings

__all__ = [
    "ENROLLMENT_SECRET",
    "ServiceProcess",
    "free_port",
    "gateway_process",
    "projector_process",
    "service_env",
]

ENROLLMENT_SECRET = "keel-bench-enrollment"  # noqa: S105 - a throwaway secret of the bench's own gateways


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The `KEEL_*` variables that point a child at `settings`' endpoints and names."""
    env = {
        "KEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KEEL_REGISTRY_URL": settings.registry_url,
        "KEEL_DATABASE_URL": settings.database_url,
        "KEEL_TOPIC_PREFIX": settings.topic_prefix,
        "KEEL_PG_SCHEMA": settings.pg_schema,
        "KEEL_CONSUMER_GROUP": settings.consumer_group,
        "KEEL_CHANGE_TOPIC_PARTITIONS": str(settings.change_topic_partitions),
        "KEEL_LOG_LEVEL": "INFO",
        **settings.kafka_security_environment(),
    }
    env.update(extra)
    return env


class ServiceProcess:
    """One `keel run …` child: start (waits for health), gauges, stop (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, arguments: list[str], env: Mapping[str, str], health_url: str, log: Path) -> None:
        self.name = name
        self.arguments = arguments
        self.env = dict(env)
        self.health_url = health_url
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._gauge: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    async def start(self, *, timeout_s: float = 60.0) -> None:
        """Spawn and wait until the health endpoint answers 200 (ServiceUnavailableError otherwise)."""
        keel = Path(sys.executable).with_name("keel")
        command = [str(keel)] if keel.exists() else [sys.executable, "-c", "from deploy.cli import main; main()"]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as sink:
            self._process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the wait below is async
                [*command, *self.arguments],
                env={**{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}, **self.env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._gauge = psutil.Process(self._process.pid)
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise ServiceUnavailableError(self.name, f"exited with {self._process.returncode}; see {self.log}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        await self.stop()
        raise ServiceUnavailableError(self.name, f"not healthy after {timeout_s:.0f}s; see {self.log}")

    def rss_bytes(self) -> int:
        """Resident memory now (0 when not running)."""
        if self._gauge is None or self.pid is None:
            return 0
        with contextlib.suppress(psutil.Error):
            return int(self._gauge.memory_info().rss)
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far (0 when not running)."""
        if self._gauge is None or self.pid is None:
            return 0.0
        with contextlib.suppress(psutil.Error):
            times = self._gauge.cpu_times()
            return float(times.user + times.system)
        return 0.0

    async def stop(self, *, timeout_s: float = 30.0) -> None:
        """SIGTERM (the service drains), SIGKILL after `timeout_s`; idempotent."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 10)


def gateway_process(settings: Settings, log_dir: Path, **extra: str) -> tuple[ServiceProcess, str]:
    """A gateway child on a free port for `settings`, and its base URL."""
    port = free_port()
    env = service_env(
        settings,
        KEEL_GATEWAY_HOST="127.0.0.1",
        KEEL_GATEWAY_PORT=str(port),
        KEEL_GATEWAY_ENROLLMENT_SECRET=ENROLLMENT_SECRET,
        **extra,
    )
    url = f"http://127.0.0.1:{port}"
    return ServiceProcess("gateway", ["run", "gateway"], env, f"{url}/healthz", log_dir / "gateway.log"), url


def projector_process(settings: Settings, log_dir: Path, **extra: str) -> ServiceProcess:
    """A projector child for `settings` (health on a free port)."""
    port = free_port()
    env = service_env(settings, KEEL_PROJECTOR_HEALTH_PORT=str(port), **extra)
    return ServiceProcess(
        "projector", ["run", "projector"], env, f"http://127.0.0.1:{port}/ready", log_dir / "projector.log"
    )
