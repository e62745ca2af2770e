"""Field-level encryption of sensitive payload fields in PostgreSQL (docs/security.md, "Sensitive fields").

A payload field listed in its entity's `sensitive_fields` (schemas/subjects.toml) is stored encrypted
wherever the projection keeps a value of it: the entity table's column, the merged state (`state` jsonb:
field values and the write history) and the outbox bodies served to devices. Kafka keeps what the device
signed (the log is not rewritten: topic access is the control there); devices get plaintext through the
gateway.

A sealed value is text, so it fits the field's `text` column: `enc:v1:<key id>:<base64(nonce || AES-256-GCM
ciphertext)>`, with `tenant|entity type|entity id|field` as associated data (a value copied to another
entity or field does not decrypt). Keys live in a keyring file (`KEEL_FIELD_KEYS_FILE`, JSON
`{"active": "<id>", "keys": {"<id>": "<base64 of 32 bytes>"}}`): new values are sealed with the active key,
any listed key opens; values sealed with a retired key are re-sealed lazily (the next write of the entity)
or at once by `keel projections reencrypt`. Values written before encryption was switched on are plain text
and read as such, so switching on needs no migration.

Digests (projections.digest) and conflict decisions are computed over plaintext: every reader of these
tables opens the values first, so a device's digest, a rebuilt shadow and the live table agree whatever
nonces the ciphertexts used.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keel.errors import ConfigurationError, IntegrityError
from keel.settings import Settings, get_settings
from schemas.catalog import Catalog, default_catalog

__all__ = ["PREFIX", "FieldCipher", "FieldKeyring", "default_field_cipher", "field_cipher"]

PREFIX = "enc:v1:"
_NONCE = 12


@dataclass(frozen=True)
class FieldKeyring:
    """Key id → 32-byte key, and the id of the key that seals new values."""

    keys: Mapping[str, bytes]
    active: str

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise ConfigurationError(f"the active field key {self.active!r} is not in the keyring")
        for key_id, key in self.keys.items():
            if len(key) != 32 or not key_id or ":" in key_id:
                raise ConfigurationError(f"field key {key_id!r}: ids without ':' and 32-byte keys expected")

    @classmethod
    def from_file(cls, path: Path) -> FieldKeyring:
        """Read a keyring file (module docstring); ConfigurationError when unusable."""
        try:
            raw = json.loads(path.read_text())
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in raw["keys"].items()}
            return cls(keys, str(raw["active"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigurationError(f"{path}: not a usable field keyring: {error}") from error

    @staticmethod
    def write(path: Path, keys: Mapping[str, bytes], active: str) -> None:
        """Write a keyring file (0600)."""
        body = {"active": active, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}}
        FieldKeyring(keys, active)  # validate before writing
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(body, indent=2))
        temporary.chmod(0o600)
        temporary.replace(path)

    @staticmethod
    def new_key() -> bytes:
        """A fresh random key."""
        return AESGCM.generate_key(bit_length=256)


@dataclass
class FieldCipher:
    """Seals and opens the sensitive fields of payloads, states and outbox bodies (no-op without a keyring)."""

    keyring: FieldKeyring | None
    sensitive: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def for_catalog(cls, keyring: FieldKeyring | None, catalog: Catalog | None = None) -> FieldCipher:
        """A cipher for the catalog's sensitive fields."""
        catalog = catalog or default_catalog()
        return cls(keyring, {entity: catalog.sensitive_fields(entity) for entity in catalog.entities()})

    @property
    def is_enabled(self) -> bool:
        """Whether values are sealed at all."""
        return self.keyring is not None and any(self.sensitive.values())

    def fields_of(self, entity_type: str) -> frozenset[str]:
        """The sensitive fields of an entity type (empty when encryption is off)."""
        return self.sensitive.get(entity_type, frozenset()) if self.keyring is not None else frozenset()

    # ------------------------------------------------------------ one value

    def seal(self, value: Any, where: str) -> Any:
        """`value` sealed with the active key (non-strings and already sealed text are left alone)."""
        if self.keyring is None or not isinstance(value, str) or value.startswith(PREFIX):
            return value
        key_id = self.keyring.active
        nonce = os.urandom(_NONCE)
        sealed = nonce + AESGCM(self.keyring.keys[key_id]).encrypt(nonce, value.encode(), where.encode())
        return f"{PREFIX}{key_id}:{base64.b64encode(sealed).decode()}"

    def open(self, value: Any, where: str) -> Any:
        """Plaintext of a sealed value (plain values pass through: written before encryption was on)."""
        if not isinstance(value, str) or not value.startswith(PREFIX):
            return value
        key_id, _, blob = value[len(PREFIX) :].partition(":")
        key = self.keyring.keys.get(key_id) if self.keyring is not None else None
        if key is None:
            raise ConfigurationError(f"field key {key_id!r} is not in the keyring (KEEL_FIELD_KEYS_FILE): {where}")
        try:
            sealed = base64.b64decode(blob, validate=True)
            return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], where.encode()).decode()
        except (ValueError, InvalidTag) as error:
            raise IntegrityError(f"sensitive value of {where} does not decrypt: it was altered or moved") from error

    def key_id_of(self, value: Any) -> str | None:
        """The key id a sealed value names (None for plain values)."""
        if not isinstance(value, str) or not value.startswith(PREFIX):
            return None
        return value[len(PREFIX) :].partition(":")[0]

    # ------------------------------------------------------------ payloads, states, bodies

    @staticmethod
    def _where(tenant_id: str, entity_type: str, entity_id: str, name: str) -> str:
        return f"{tenant_id}|{entity_type}|{entity_id}|{name}"

    def _map_payload(
        self, payload: Mapping[str, Any] | None, entity: tuple[str, str, str], seal: bool
    ) -> dict[str, Any] | None:
        if payload is None:
            return None
        names = self.fields_of(entity[1])
        result = dict(payload)
        for name in names & set(result):
            where = self._where(*entity, name)
            result[name] = self.seal(result[name], where) if seal else self.open(result[name], where)
        return result

    def seal_payload(self, payload: Mapping[str, Any] | None, tenant: str, kind: str, entity_id: str) -> Any:
        """A payload (visible values) with its sensitive fields sealed."""
        return self._map_payload(payload, (tenant, kind, entity_id), seal=True)

    def open_payload(self, payload: Mapping[str, Any] | None, tenant: str, kind: str, entity_id: str) -> Any:
        """Inverse of `seal_payload`."""
        return self._map_payload(payload, (tenant, kind, entity_id), seal=False)

    def _map_state(self, raw: Mapping[str, Any], entity: tuple[str, str, str], seal: bool) -> dict[str, Any]:
        names = self.fields_of(entity[1])
        if not names:
            return dict(raw)
        state = copy.deepcopy(dict(raw))
        for name, pair in (state.get("f") or {}).items():
            if name in names:
                where = self._where(*entity, name)
                pair[0] = self.seal(pair[0], where) if seal else self.open(pair[0], where)
        for record in state.get("h") or ():
            values = record.get("v") or {}
            for name in names & set(values):
                where = self._where(*entity, name)
                values[name] = self.seal(values[name], where) if seal else self.open(values[name], where)
        return state

    def seal_state(self, raw: Mapping[str, Any], tenant: str, kind: str, entity_id: str) -> dict[str, Any]:
        """A state's JSON (projections.state_codec) with sensitive values sealed."""
        return self._map_state(raw, (tenant, kind, entity_id), seal=True)

    def open_state(self, raw: Mapping[str, Any], tenant: str, kind: str, entity_id: str) -> dict[str, Any]:
        """Inverse of `seal_state`."""
        return self._map_state(raw, (tenant, kind, entity_id), seal=False)

    def _map_body(self, body: Mapping[str, Any], seal: bool) -> dict[str, Any]:
        kind, tenant, entity_id = body.get("entity_type"), body.get("tenant_id"), body.get("entity_id")
        if not isinstance(kind, str) or not isinstance(tenant, str) or not isinstance(entity_id, str):
            return dict(body)
        names = self.fields_of(kind)
        result = dict(body)
        if names and isinstance(body.get("payload"), Mapping):  # a change
            result["payload"] = self._map_payload(body["payload"], (tenant, kind, entity_id), seal)
        if body.get("field") in names:  # a conflict notice: the two values of a sensitive field
            where = self._where(tenant, kind, entity_id, str(body["field"]))
            for side in ("winner_value", "loser_value"):
                if side in result:
                    result[side] = self.seal(result[side], where) if seal else self.open(result[side], where)
        return result

    def seal_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """An outbox body (a change's payload, a conflict notice's values) with sensitive values sealed."""
        return self._map_body(body, seal=True)

    def open_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Inverse of `seal_body`."""
        return self._map_body(body, seal=False)


def field_cipher(settings: Settings, catalog: Catalog | None = None) -> FieldCipher:
    """The cipher of a deployment: its keyring file (`KEEL_FIELD_KEYS_FILE`), or none (values in clear)."""
    path = settings.field_keys_file
    return FieldCipher.for_catalog(FieldKeyring.from_file(path) if path is not None else None, catalog)


@lru_cache(maxsize=1)
def default_field_cipher() -> FieldCipher:
    """The process's cipher, from its settings: what adapters use when not handed one explicitly."""
    return field_cipher(get_settings())
