"""Passwords of the secure local stack: generated once, kept in one owner-only file of the runtime folder.

`<home>/secrets/credentials.json` (folder 0700, file 0600) maps each Kafka principal and each PostgreSQL
service role to its password. `keel stack credentials` prints them; services read them through their
settings (`KEEL_KAFKA_SASL_PASSWORD`, `KEEL_DATABASE_URL`), never from this file directly.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from keel.errors import ConfigurationError

__all__ = ["CredentialStore", "new_password"]

# URL-safe base64 only: a password never needs quoting in a DSN, a JAAS line or a SQL literal.
_PASSWORD = re.compile(r"^[A-Za-z0-9_-]{24,128}$")


def new_password() -> str:
    """A random password of 192 bits in URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(24)


def _checked(password: str, owner: str) -> str:
    if not _PASSWORD.match(password):
        raise ConfigurationError(f"password of {owner} must be 24-128 URL-safe base64 characters")
    return password


@dataclass(frozen=True)
class CredentialStore:
    """The credentials file of one stack."""

    path: Path

    @classmethod
    def in_home(cls, home: Path) -> CredentialStore:
        """The store of the stack whose runtime folder is `home`."""
        return cls(home / "secrets" / "credentials.json")

    def load(self) -> dict[str, dict[str, str]]:
        """Section → name → password (empty when the file does not exist yet)."""
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"{self.path}: unreadable credentials file ({error})") from error
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ConfigurationError(f"{self.path}: expected {{section: {{name: password}}}}")
        return {str(k): {str(n): str(p) for n, p in v.items()} for k, v in data.items()}

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.parent.chmod(0o700)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.unlink(missing_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
        temporary.replace(self.path)

    def ensure(self, section: str, names: Iterable[str]) -> dict[str, str]:
        """Passwords of `names` in `section`, generating (and saving) those that are missing."""
        data = self.load()
        entries = data.setdefault(section, {})
        missing = [name for name in names if name not in entries]
        for name in missing:
            entries[name] = new_password()
        if missing:
            self._save(data)
        return {name: _checked(entries[name], f"{section}/{name}") for name in names}

    def password(self, section: str, name: str) -> str:
        """The stored password of one principal or role; ConfigurationError when there is none."""
        entries = self.load().get(section, {})
        if name not in entries:
            raise ConfigurationError(f"no {section} password for {name!r} in {self.path}; start the secure stack first")
        return _checked(entries[name], f"{section}/{name}")

    def replace(self, section: str, name: str, password: str) -> None:
        """Store a new password for one principal or role (after the server accepted it)."""
        data = self.load()
        data.setdefault(section, {})[name] = _checked(password, f"{section}/{name}")
        self._save(data)
