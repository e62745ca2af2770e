"""Detached service processes tracked by pid files that also record the process start time.

`stop` only ever signals a pid whose start time still matches its pid file, so a pid the kernel has
reused for somebody else's process is never touched; nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["ManagedProcess", "read_pid", "run_checked"]


@dataclass(frozen=True)
class ManagedProcess:
    """A service process started by the stack, its pid file and its log file."""

    name: str
    pid_file: Path
    log_file: Path

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> int:
        """Start `argv` detached (own session), logging to `log_file`; record its pid and start time."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env or {})
        command = list(argv)
        if user is not None:
            command = ["runuser", "-u", user, "--", *command]
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=full_env,
                start_new_session=True,
            )
        self.adopt(process.pid)
        return process.pid

    def adopt(self, pid: int) -> None:
        """Record an already running pid (e.g. a server that daemonized itself) as ours."""
        created = psutil.Process(pid).create_time()
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps({"pid": pid, "create_time": created}))

    def pid(self) -> int | None:
        """The pid if our process is still alive, else None (a stale pid file is ignored)."""
        return read_pid(self.pid_file)

    def is_alive(self) -> bool:
        """True while the process we started still runs."""
        return self.pid() is not None

    def stop(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM our process group, then SIGKILL after `timeout_s`; True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
        for member in family:
            _signal(member, signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=timeout_s)
        for member in alive:
            _signal(member, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` to our process only (fault injection: SIGKILL, SIGSTOP, SIGCONT)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, sig)


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` if that very process (same start time) is alive."""
    try:
        record = json.loads(pid_file.read_text())
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > 0.01:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (FileNotFoundError, ValueError, KeyError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return int(record["pid"])


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    log_file: Path,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 900,
    redact: Sequence[str] = (),
) -> None:
    """Run a set-up command to completion, appending its output to `log_file`; raise with context on failure.

    Strings in `redact` (secrets passed as arguments) are masked in the command line written to the log.
    """
    from keel.errors import ConfigurationError

    command = list(argv)
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    started = time.monotonic()
    with log_file.open("ab") as log:
        shown = " ".join(command)
        for secret in redact:
            shown = shown.replace(secret, "***")
        log.write(f"\n$ {shown}\n".encode())
        log.flush()
        result = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=full_env, timeout=timeout_s, check=False
        )
    if result.returncode != 0:
        raise ConfigurationError(
            f"{what} failed (exit {result.returncode} after {time.monotonic() - started:.0f}s); see {log_file}"
        )
