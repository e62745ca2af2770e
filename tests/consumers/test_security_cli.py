"""`keel audit keygen` and `keel field-keys add`: key files created owner-only, rotation keeps old keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from projections.checkpoints import CheckpointKey
from projections.field_encryption import FieldKeyring

KEEL = str(Path(sys.executable).with_name("keel"))


def keel(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")} | env
    return subprocess.run([KEEL, *args], env=environment, capture_output=True, text=True, timeout=60, check=False)


def test_keygen_writes_an_owner_only_key_and_never_overwrites_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pem"
    made = keel("audit", "keygen", str(path))
    assert made.returncode == 0, made.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    key = CheckpointKey.from_pem_file(path)
    assert key.key_id in made.stdout
    again = keel("audit", "keygen", str(path))
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stdout
    assert CheckpointKey.from_pem_file(path).key_id == key.key_id


def test_field_keys_add_creates_the_keyring_then_rotates_keeping_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "fields.json"
    assert keel("field-keys", "add", KEEL_FIELD_KEYS_FILE=str(path)).returncode == 0
    first = FieldKeyring.from_file(path)
    assert list(first.keys) == [first.active]
    rotated = keel("field-keys", "add", "--file", str(path))
    assert rotated.returncode == 0, rotated.stderr
    second = FieldKeyring.from_file(path)
    assert second.active != first.active
    assert set(second.keys) == {first.active, second.active}
    assert path.stat().st_mode & 0o777 == 0o600
    assert keel("field-keys", "add").returncode == 2, "no keyring file configured"
