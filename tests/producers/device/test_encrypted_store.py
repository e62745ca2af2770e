"""The encrypted device store: no plaintext on disk, a wrong key refused at open, tampering detected, and a
device syncing through it like any other."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from keel.errors import ConfigurationError, IntegrityError, WrongKeyError
from producers.device import Device
from producers.device.encrypted_store_adapter import EncryptedSqliteDeviceStore
from producers.device.replica import SECRET
from producers.device.signing import SIGNING_KEY
from producers.device.sqlite_store_adapter import SqliteDeviceStore
from tests.producers.support import ENROLL_SECRET, FAST, GATEWAY_URL, fake_keel

FAST_KDF = 2**10  # the default (2**15) costs ~0.1 s per open; the tests open many stores


def disk_bytes(path: Path) -> bytes:
    """The database file and its WAL, as someone reading the disk sees them."""
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def store(path: Path, passphrase: str = "correct horse battery staple") -> EncryptedSqliteDeviceStore:
    return EncryptedSqliteDeviceStore(path, passphrase=passphrase, scrypt_n=FAST_KDF)


async def test_a_syncing_device_leaves_no_plaintext_on_disk(tmp_path: Path) -> None:
    async with fake_keel() as keel:
        paths = [tmp_path / "alice.db", tmp_path / "bob.db"]
        devices = [
            await Device.enroll(
                store(path),
                GATEWAY_URL,
                tenant_id="acme",
                enrollment_secret=ENROLL_SECRET,
                versions={"task": [2], "comment": [1]},
                device_id=name,
                config=FAST,
                transport=keel.transport,
            )
            for name, path in zip(("alice-laptop", "bob-phone"), paths, strict=True)
        ]
        try:
            alice, bob = devices
            alice.upsert("task", "quarterly-layoffs", {"title": "Draft the layoff list", "description": "Confidential"})
            alice.upsert("comment", "c-1", {"task_id": "quarterly-layoffs", "body": "Salary of Jane Doe: 123456"})
            await alice.sync()
            await keel.project()
            await bob.sync()
            assert bob.get("task", "quarterly-layoffs") == alice.get("task", "quarterly-layoffs")
            with alice.replica.store.transaction() as tx:
                secrets = [tx.get_meta(SECRET), tx.get_meta(SIGNING_KEY)]
        finally:
            for device in devices:
                await device.close()
    assert all(secrets)
    for path in paths:
        data = disk_bytes(path)
        assert len(data) > 4096
        for plaintext in ("Draft the layoff list", "Confidential", "Jane Doe", "123456", "quarterly-layoffs", *secrets):
            assert str(plaintext).encode() not in data, (path.name, plaintext)
            assert str(plaintext).encode("utf-16-le") not in data


def test_a_wrong_passphrase_or_key_is_refused_at_open_and_is_not_retriable(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    opened = store(path)
    with opened.transaction() as tx:
        tx.set_meta("identity.device_secret", "s3cret")
    opened.close()
    for attempt in (
        lambda: store(path, "wrong horse battery staple"),
        lambda: EncryptedSqliteDeviceStore(path, key=bytes(64)),
    ):
        with pytest.raises(WrongKeyError, match="does not open the device store") as refused:
            attempt()
        assert not refused.value.retriable
        assert isinstance(refused.value, ConfigurationError)
    reopened = store(path)
    with reopened.transaction() as tx:
        assert tx.get_meta("identity.device_secret") == "s3cret"
    reopened.close()
    with pytest.raises(ConfigurationError, match="exactly one"):
        EncryptedSqliteDeviceStore(path)


def test_an_altered_or_moved_value_fails_authentication(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    opened = store(path)
    with opened.transaction() as tx:
        tx.set_meta("a", "first")
        tx.set_meta("b", "second")
    opened.close()
    raw = sqlite3.connect(path)
    try:
        value = bytes(raw.execute("SELECT value FROM meta WHERE key = 'a'").fetchone()[0])
        raw.execute("UPDATE meta SET value = ? WHERE key = 'b'", (value,))  # moved to another row
        raw.execute("UPDATE meta SET value = ? WHERE key = 'a'", (value[:-1] + bytes([value[-1] ^ 1]),))
        raw.commit()
    finally:
        raw.close()
    reopened = store(path)
    try:
        for key in ("a", "b"):
            with (
                pytest.raises(IntegrityError, match=f"meta\\|{key} fails authentication"),
                reopened.transaction() as tx,
            ):
                tx.get_meta(key)
    finally:
        reopened.close()


def test_a_plaintext_store_is_not_mistaken_for_an_encrypted_one(tmp_path: Path) -> None:
    SqliteDeviceStore(tmp_path / "plain.db").close()
    with pytest.raises(ConfigurationError, match="plaintext device store"):
        store(tmp_path / "plain.db")
