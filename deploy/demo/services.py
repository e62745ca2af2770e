"""The demo's services as child processes (`keel run projector`, `keel run gateway`) it can SIGKILL and restart.

Each runs with the run's own `KEEL_*` environment (topic prefix, PostgreSQL schema, consumer group, ports),
logs to a file of the run, and counts as started once its health endpoint answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from keel.errors import ConfigurationError, ServiceUnavailableError

__all__ = ["ServiceProcess", "free_port", "keel_command"]


def free_port() -> int:
    """A TCP port nobody listens on right now (bound and released: the service binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def keel_command() -> list[str]:
    """How to start `keel` in a child process: the console script beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("keel")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("keel")
    if found:
        return [found]
    return [sys.executable, "-c", "from deploy.cli import main; main()"]


class ServiceProcess:
    """One `keel run …` child process: start (and wait for health), SIGKILL, restart, stop."""

    def __init__(
        self, name: str, arguments: list[str], env: Mapping[str, str], log_file: Path, health_url: str
    ) -> None:
        self.name = name
        self.arguments = arguments
        self.env = dict(env)
        self.log_file = log_file
        self.health_url = health_url
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def pid(self) -> int | None:
        """The pid while running."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def is_running(self) -> bool:
        """Whether the child is alive."""
        return self.pid is not None

    async def start(self, *, timeout_s: float = 90.0) -> float:
        """Spawn the child and wait until its health endpoint answers 200; seconds it took."""
        began = time.monotonic()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n---- {self.name} start {self.starts + 1} ----\n".encode())
            log.flush()
            self.process = subprocess.Popen(  # noqa: ASYNC220 - spawning returns at once; the wait below is async
                [*keel_command(), *self.arguments],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the demo's terminal is the demo's to handle, not the child's
            )
        self.starts += 1
        deadline = began + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServiceUnavailableError(
                        self.name, f"exited with {self.process.returncode} during start; see {self.log_file}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_url)).status_code == 200:
                        return time.monotonic() - began
                await asyncio.sleep(0.2)
        raise ServiceUnavailableError(self.name, f"not healthy after {timeout_s:.0f}s; see {self.log_file}")

    async def kill(self) -> None:
        """SIGKILL and reap (the incident: no drain, no goodbye)."""
        if self.process is None or self.process.poll() is not None:
            raise ConfigurationError(f"{self.name} is not running")
        self.process.send_signal(signal.SIGKILL)
        self.kills += 1
        await self._wait_exit(10.0)

    async def stop(self, *, timeout_s: float = 35.0) -> None:
        """SIGTERM (the service drains), SIGKILL after `timeout_s`; idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await self._wait_exit(timeout_s)
        except TimeoutError:
            self.process.kill()
            await self._wait_exit(5.0)

    async def _wait_exit(self, timeout_s: float) -> None:
        """Reap the child (TimeoutError when it outlives `timeout_s`)."""
        assert self.process is not None
        try:
            await asyncio.to_thread(self.process.wait, timeout_s)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(f"{self.name} still running after {timeout_s:g}s") from error
