"""The device's op-signing key and hash chain (docs/security.md, "Tamper evidence").

A device gets an Ed25519 key at enrolment; its public half is registered with the gateway, its private half
lives in the device store's metadata (so an encrypted store keeps it encrypted at rest). Every op a write
logs is sealed in the same transaction: chained after the previous op's hash (kept in metadata beside it),
hashed and signed (`schemas.op_chain.seal`). A store restored from an old backup adopts the gateway's chain
head at the next handshake, so its next op still links to what the gateway last consumed.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keel.errors import ConfigurationError
from producers.device.store import StoreTransaction
from schemas.envelope import ChangeEvent
from schemas.op_chain import public_key_bytes, seal

__all__ = ["CHAIN_HEAD", "SIGNING_KEY", "OpSigner"]

SIGNING_KEY = "identity.signing_key"  # the private key's 32-byte seed, hex
CHAIN_HEAD = "chain.head_hash"  # hash of the newest logged op, hex


class OpSigner:
    """Seals a device's ops with its key, in the store transaction that logs them."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def generate(cls) -> OpSigner:
        """A signer with a fresh key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, tx: StoreTransaction) -> OpSigner | None:
        """The signer kept in a store (None for a device enrolled without a key)."""
        seed = tx.get_meta(SIGNING_KEY)
        if seed is None:
            return None
        try:
            return cls(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)))
        except ValueError as error:
            raise ConfigurationError(f"the device store's signing key is unreadable: {error}") from error

    def save(self, tx: StoreTransaction) -> None:
        """Keep the key in the store (refuses to replace another key: the gateway knows only one)."""
        seed = self._key.private_bytes_raw().hex()
        stored = tx.get_meta(SIGNING_KEY)
        if stored is not None and stored != seed:
            raise ConfigurationError("this device store already holds another signing key")
        tx.set_meta(SIGNING_KEY, seed)

    @property
    def public_key_hex(self) -> str:
        """The public key as enrolment sends it."""
        return public_key_bytes(self._key).hex()

    def seal_in(self, tx: StoreTransaction, event: ChangeEvent) -> ChangeEvent:
        """`event` chained after the store's chain head, hashed and signed; the head moves to it."""
        head = tx.get_meta(CHAIN_HEAD)
        sealed = seal(event, self._key, bytes.fromhex(head) if head else None)
        assert sealed.hash is not None
        tx.set_meta(CHAIN_HEAD, sealed.hash.hex())
        return sealed

    @staticmethod
    def adopt_head(tx: StoreTransaction, head_hash: str | None) -> None:
        """Chain the next op after `head_hash` (the gateway's head, for a store behind it)."""
        if head_hash:
            tx.set_meta(CHAIN_HEAD, head_hash)
