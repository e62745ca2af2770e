"""The secure stack's credentials file: generated once, owner-only, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.credentials import CredentialStore, new_password
from keel.errors import ConfigurationError


def test_passwords_are_generated_once_and_kept_owner_only(tmp_path: Path) -> None:
    store = CredentialStore.in_home(tmp_path)
    first = store.ensure("kafka", ["admin", "keel-gateway"])
    assert len(set(first.values())) == 2
    assert store.ensure("kafka", ["admin", "keel-gateway"]) == first
    more = store.ensure("kafka", ["admin", "keel-projector"])
    assert more["admin"] == first["admin"]
    assert store.password("kafka", "keel-projector") == more["keel-projector"]
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.path.parent.stat().st_mode & 0o777 == 0o700


def test_replace_and_lookup_errors(tmp_path: Path) -> None:
    store = CredentialStore.in_home(tmp_path)
    store.ensure("postgres", ["keel_gateway"])
    fresh = new_password()
    store.replace("postgres", "keel_gateway", fresh)
    assert store.password("postgres", "keel_gateway") == fresh
    with pytest.raises(ConfigurationError, match="no kafka password for 'nobody'"):
        store.password("kafka", "nobody")
    with pytest.raises(ConfigurationError, match="URL-safe base64"):
        store.replace("postgres", "keel_gateway", "it's short")


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    store = CredentialStore.in_home(tmp_path)
    store.path.parent.mkdir(parents=True)
    store.path.write_text("[1, 2]")
    with pytest.raises(ConfigurationError, match="expected"):
        store.load()
    store.path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="unreadable credentials file"):
        store.load()
