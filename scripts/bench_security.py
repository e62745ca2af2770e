"""The costs quoted in docs/security.md ("Costs"): signing, verifying, tokens, encryption at rest.

Ops signed and verified, tokens issued and verified, the encrypted device store against the plain one, and
sensitive-field sealing. Pure CPU and local files, no services: `.venv/bin/python scripts/bench_security.py`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keel.hlc import HlcTimestamp
from producers.device.encrypted_store_adapter import DEFAULT_SCRYPT_N, EncryptedSqliteDeviceStore
from producers.device.replica import Replica
from producers.device.signing import OpSigner
from producers.device.sqlite_store_adapter import SqliteDeviceStore
from producers.device.store import DeviceStore
from producers.gateway.tokens import TokenAuthority
from projections.field_encryption import FieldCipher, FieldKeyring
from schemas.catalog import default_catalog
from schemas.codec import encode_body
from schemas.envelope import ChangeEvent, Op
from schemas.op_chain import raise_if_forged, raise_if_not_canonical, seal

PASSPHRASE = "a throwaway benchmark store"  # noqa: S105 - not a secret


def per_call_us(work: Callable[[], object], repeat: int) -> float:
    """Mean microseconds per call."""
    started = time.perf_counter()
    for _ in range(repeat):
        work()
    return (time.perf_counter() - started) / repeat * 1e6


def task(seq: int) -> ChangeEvent:
    """A task v2 upsert with a complete payload."""
    payload = {"title": f"task {seq}", "description": "x" * 200, "due": None, "status": "TODO", "project_id": None}
    return ChangeEvent(
        "6f1f7a52-7a4c-4d3e-9d0e-2f2f3b0c1a11",
        "acme",
        "d-1",
        seq,
        "task",
        f"t-{seq}",
        Op.UPSERT,
        HlcTimestamp(1_750_000_000_000, seq, "d-1"),
        2,
        payload | {"priority": 1},
        ("title",),
    )


def ops_per_second(store: DeviceStore, count: int) -> float:
    """Local writes per second (each one transaction: entity, op and clock, fsync'd)."""
    replica = Replica(store, tenant_id="acme", device_id="d-1", supported_versions={"task": [2]})
    started = time.perf_counter()
    for n in range(count):
        replica.upsert("task", f"t-{n}", {"title": f"task {n}", "description": "x" * 200})
    return count / (time.perf_counter() - started)


def main() -> None:
    """Print every figure."""
    key = Ed25519PrivateKey.generate()
    event = task(7)
    sealed = seal(event, key, bytes(32))
    schema = default_catalog().schema("task", 2)
    body = encode_body(sealed.to_avro(), schema.parsed)
    sealing = per_call_us(lambda: seal(event, key, bytes(32)), 2000)
    verifying = per_call_us(lambda: raise_if_forged(sealed, key.public_key()), 2000)
    round_trip = per_call_us(lambda: raise_if_not_canonical(sealed, body, schema.parsed), 2000)
    print(f"seal an op (canonical bytes + SHA-256 + Ed25519): {sealing:.0f} µs")
    print(f"verify an op (hash + signature): {verifying:.0f} µs")
    print(f"Avro round-trip check: {round_trip:.0f} µs")

    tokens = TokenAuthority.generate()
    token, _ = asyncio.run(tokens.issue("acme", "d-1", {"task": 2}))

    async def issue_and_verify(rounds: int) -> tuple[float, float]:
        started = time.perf_counter()
        for _ in range(rounds):
            await tokens.issue("acme", "d-1", {"task": 2})
        issued = (time.perf_counter() - started) / rounds * 1e6
        started = time.perf_counter()
        for _ in range(rounds):
            await tokens.verify(token)
        return issued, (time.perf_counter() - started) / rounds * 1e6

    issue_us, verify_us = asyncio.run(issue_and_verify(2000))
    print(f"token issue / verify: {issue_us:.0f} / {verify_us:.0f} µs")

    cipher = FieldCipher.for_catalog(FieldKeyring({"k1": FieldKeyring.new_key()}, "k1"))
    value = cipher.seal("Salary of Jane Doe: 123456", "acme|comment|c-1|body")
    seal_us = per_call_us(lambda: cipher.seal("Salary of Jane Doe: 123456", "acme|comment|c-1|body"), 5000)
    open_us = per_call_us(lambda: cipher.open(value, "acme|comment|c-1|body"), 5000)
    print(f"sensitive field seal / open: {seal_us:.1f} / {open_us:.1f} µs")

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        plain = SqliteDeviceStore(root / "plain.db")
        encrypted = EncryptedSqliteDeviceStore(root / "enc.db", passphrase=PASSPHRASE)
        try:
            for store in (plain, encrypted):  # both sign their ops: the difference is the encryption alone
                with store.transaction() as tx:
                    OpSigner.generate().save(tx)
            print(
                f"device writes (upsert + signed op, fsync each): plain SQLite {ops_per_second(plain, 300):.0f}/s, "
                f"encrypted {ops_per_second(encrypted, 300):.0f}/s"
            )
        finally:
            plain.close()
            encrypted.close()
        started = time.perf_counter()
        EncryptedSqliteDeviceStore(root / "enc.db", passphrase=PASSPHRASE).close()
        print(f"encrypted store open (scrypt n={DEFAULT_SCRYPT_N}): {(time.perf_counter() - started) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
