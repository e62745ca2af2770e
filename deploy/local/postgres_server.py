"""A private PostgreSQL cluster (Debian's binaries, `initdb` under the runtime folder) with a `keel` role.

Connections over TCP are trusted (no password) unless `require_passwords` is set (the secure stack):
then every TCP login needs its role's password (scram-sha-256), and only the Unix socket, in a folder
readable by the server's user alone, stays trusted for the stack's own bootstrap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from deploy.local.processes import ManagedProcess, run_checked
from keel.errors import ConfigurationError

__all__ = [
    "PostgresServer",
    "claim_outside_folder",
    "find_pg_bin",
]

ROLE = "keel"
PASSWORD = "keel"  # noqa: S105 - local development stack on loopback only
DATABASES = ("keel", "apicurio")
_HBA_MARKER = "# keel local stack: passwords required (keel stack up --secure)"
_HBA_PASSWORDS = f"""{_HBA_MARKER}
local   all   all                  trust
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""
_HBA_TRUST = """# keel local stack: loopback trusted (initdb --auth=trust)
local   all   all                  trust
host    all   all   127.0.0.1/32   trust
host    all   all   ::1/128        trust
"""


def find_pg_bin() -> Path:
    """The bin folder of the newest PostgreSQL server installed from Debian's packages."""
    root = Path("/usr/lib/postgresql")
    versions = (
        sorted((p for p in root.glob("*/bin") if (p / "postgres").exists()), key=lambda p: int(p.parent.name))
        if root.is_dir()
        else []
    )
    if versions:
        return versions[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ConfigurationError("PostgreSQL server binaries not found; apt-get install -y postgresql")


def _reachable_by(user: str, folder: Path) -> bool:
    """Whether `user` can traverse every parent of `folder` (PostgreSQL refuses to run as root)."""
    uid = pwd.getpwnam(user).pw_uid
    for parent in [folder, *folder.parents]:
        if not parent.exists():
            continue
        stat = parent.stat()
        if stat.st_uid == uid:
            continue
        if not stat.st_mode & 0o001:
            return False
    return True


OWNER_FILE = "keel-home"  # in an outside cluster folder and in its home: the same random token in both


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def claim_outside_folder(outside: Path, home: Path) -> None:
    """Make the cluster folder `outside` (named after `home`'s path) belong to this very `home`.

    A folder left by an earlier home at the same path (a deleted clone or pytest temp folder, recreated)
    is discarded rather than adopted: its stale `postmaster.pid` or data would otherwise break or leak
    into the new stack. A folder without an owner mark (made before marks existed) is adopted.
    """
    home.mkdir(parents=True, exist_ok=True)
    token_file, owner = home / OWNER_FILE, outside / OWNER_FILE
    with contextlib.suppress(FileExistsError), token_file.open("x") as fresh:  # first writer wins, once
        fresh.write(secrets.token_hex(16) + "\n")
    token = token_file.read_text()
    if owner.exists() and owner.read_text() != token:
        pid = _pid_alive(outside / "data" / "postmaster.pid")
        if pid is not None:
            raise ConfigurationError(
                f"{outside} belongs to a removed stack whose PostgreSQL (pid {pid}) still runs; stop it "
                f"(pg_ctl -D {outside / 'data'} stop) and retry"
            )
        shutil.rmtree(outside)
    outside.mkdir(parents=True, exist_ok=True)
    owner.write_text(token)


class PostgresServer:
    """A PostgreSQL cluster owned by the stack; run as `postgres` when we are root."""

    def __init__(self, folder: Path, port: int, *, require_passwords: bool = False) -> None:
        self.port = port
        self.require_passwords = require_passwords
        self.bin = find_pg_bin()
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.folder = self._choose_folder(folder)
        self.data = self.folder / "data"
        # The server writes its own log, so it lives where the server's user can write.
        self.log_file = self.folder / "postgres.log"
        self.process = ManagedProcess("postgres", folder / "postgres.pid", self.log_file)

    def _choose_folder(self, folder: Path) -> Path:
        if self.run_as is None or _reachable_by(self.run_as, folder.resolve()):
            return folder
        # The clone lives where `postgres` cannot reach (e.g. under /root): keep the cluster in /var/tmp,
        # in a folder named after the clone so clones never share one.
        digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        outside = Path("/var/tmp") / f"keel-postgres-{digest}"  # noqa: S108 - a private folder, created 0700 by initdb
        claim_outside_folder(outside, folder)
        return outside

    @property
    def dsn(self) -> str:
        """DSN of the `keel` database as the `keel` role."""
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/keel"

    @property
    def admin_dsn(self) -> str:
        """DSN of the superuser `postgres` (trust authentication on loopback)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _own(self, path: Path) -> None:
        if self.run_as is not None:
            shutil.chown(path, self.run_as, self.run_as)

    def prepare(self) -> None:
        """Initdb once."""
        if (self.data / "PG_VERSION").exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._own(self.folder)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self._own(self.log_file)
        run_checked(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            what="initdb",
            log_file=self.log_file,
            user=self.run_as,
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# keel local stack\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.folder}'\n"
                "max_connections = 300\n"
                "shared_buffers = 256MB\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                # Sessions left idle inside a transaction would hold back every outbox reader's horizon.
                "idle_in_transaction_session_timeout = '60s'\n"
                "log_min_messages = warning\n"
            )

    def _configure_authentication(self) -> bool:
        """Write pg_hba.conf for the wanted mode; True if it changed (a running server must reload)."""
        hba = self.data / "pg_hba.conf"
        current = hba.read_text() if hba.exists() else ""
        if self.require_passwords:
            wanted = _HBA_PASSWORDS
            # The socket is trusted: only the server's user (and root) may reach the folder holding it.
            self.folder.chmod(0o700)
        elif _HBA_MARKER in current:
            wanted = _HBA_TRUST
        else:
            return False
        if current == wanted:
            return False
        hba.write_text(wanted)
        self._own(hba)
        return True

    def start(self) -> None:
        """Start the server if it is not running, then create role and databases."""
        self.prepare()
        changed = self._configure_authentication()
        if self.process.is_alive() and changed:
            run_checked(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "reload"],
                what="reloading PostgreSQL authentication",
                log_file=self.log_file,
                user=self.run_as,
            )
        if not self.process.is_alive():
            pid_file = self.data / "postmaster.pid"
            run_checked(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60", "start"],
                what="starting PostgreSQL",
                log_file=self.log_file,
                user=self.run_as,
            )
            self.process.adopt(int(pid_file.read_text().splitlines()[0]))
        self._bootstrap_roles()

    def _psql(self, sql: str, database: str = "postgres") -> str:
        # With passwords required the superuser comes in through the (trusted, private) Unix socket.
        host = str(self.folder) if self.require_passwords else "127.0.0.1"
        result = subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAtc",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise ConfigurationError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _bootstrap_roles(self) -> None:
        # Constant identifiers only: ROLE and DATABASES are module constants, never user input.
        if not self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'"):  # noqa: S608
            # The local role may create roles and databases: tests give each run its own schema and the
            # security work creates least-privilege service roles from it.
            self._psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB CREATEROLE PASSWORD '{PASSWORD}'")
        for database in DATABASES:
            if not self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):  # noqa: S608
                self._psql(f"CREATE DATABASE {database} OWNER {ROLE}")

    def _data_dir_in_use(self) -> bool:
        """Whether a server runs on our own data directory (pg_ctl status), even without a pid file."""
        if not (self.data / "postmaster.pid").exists():
            return False
        status = subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"], capture_output=True, check=False, timeout=10
        )
        return status.returncode == 0

    def stop(self) -> bool:
        """Fast shutdown through pg_ctl; True if it was running."""
        if not self.process.is_alive() and not self._data_dir_in_use():
            self.process.pid_file.unlink(missing_ok=True)
            return False
        run_checked(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            what="stopping PostgreSQL",
            log_file=self.log_file,
            user=self.run_as,
        )
        self.process.pid_file.unlink(missing_ok=True)
        return True

    def restart(self) -> None:
        """Stop then start (fault injection: a PostgreSQL restart)."""
        self.stop()
        self.start()

    def is_healthy(self) -> bool:
        """True when the server accepts connections."""
        if not self.process.is_alive():
            return False
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    def wait_healthy(self, timeout_s: float) -> bool:
        """Poll `is_healthy` until it holds or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_healthy():
                return True
            time.sleep(0.5)
        return False
