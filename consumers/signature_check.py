"""The projector's second look at signed ops: hash, signature, tenant and the links of refused seqs.

The gateway checked every op before producing it; this check is for records that did not come through
the gateway (anyone holding a producer's credentials, a restored or edited topic). Policy (docs/security.md,
"Who must sign"):

- a device with a registered key must sign every op from its key's `from_seq` on; an unsigned op, an op
  whose content does not match its hash, or a signature the device's key does not verify is refused;
- a principal without a key — a partner's producer, an operator's OVERRIDE — may write unsigned, unless
  `KEEL_REQUIRE_SIGNED_OPS` is set, which then refuses every unsigned op but operators' overrides;
- an op that carries a signature from a device without a key is refused (a key is registered first).

Device keys only ever gain newer entries, so they are cached per device and re-read once when a signature
does not verify (the device may just have rotated). Refusals are `IntegrityError`s: permanent, the record
is dead-lettered with the reason.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from keel.errors import IntegrityError
from keel.settings import Settings
from projections.chain_heads import ChainEntry, entries_of
from projections.device_keys import DeviceKey, DeviceKeyRegistry, key_for_seq
from projections.device_keys_pg_adapter import PgDeviceKeyRegistry
from projections.pg_adapter import Pool
from schemas.envelope import ChangeEvent, Op
from schemas.op_chain import (
    CHAIN_SKIPPED_HEADER,
    OpLink,
    check_link,
    links_from_header,
    public_key_from_bytes,
    raise_if_forged,
)

__all__ = ["SignatureCheck", "signature_check"]


class SignatureCheck:
    """Verifies records against the device-key registry (module docstring)."""

    def __init__(self, keys: DeviceKeyRegistry, *, require_signed: bool = False, max_devices: int = 100_000) -> None:
        self._registry = keys
        self.require_signed = require_signed
        self._cache: OrderedDict[str, list[DeviceKey]] = OrderedDict()
        self._max = max_devices

    async def _keys(self, device_id: str, *, fresh: bool = False) -> list[DeviceKey]:
        cached = None if fresh else self._cache.get(device_id)
        if cached is None:
            cached = await self._registry.keys_of(device_id)
            self._cache[device_id] = cached
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
        self._cache.move_to_end(device_id)
        return cached

    async def chain_of(self, event: ChangeEvent, headers: Sequence[tuple[str, bytes]] = ()) -> tuple[ChainEntry, ...]:
        """The verified chain entries a record brings; () for an unsigned principal; IntegrityError if forged."""
        keys = await self._keys(event.device_id)
        key = key_for_seq(keys, event.device_seq)
        signed = event.signature is not None or event.hash is not None
        if key is None and signed:
            keys = await self._keys(event.device_id, fresh=True)
            key = key_for_seq(keys, event.device_seq)
        if key is None:
            if signed:
                raise IntegrityError(
                    f"op of device {event.device_id} seq {event.device_seq} is signed, "
                    "but the device has no registered key for it"
                )
            if self.require_signed and event.op is not Op.OVERRIDE:
                raise IntegrityError(
                    f"unsigned op from device {event.device_id}: this deployment requires signed ops "
                    "(KEEL_REQUIRE_SIGNED_OPS)"
                )
            return ()
        if key.tenant_id != event.tenant_id:
            raise IntegrityError(
                f"device {event.device_id} belongs to tenant {key.tenant_id!r}, not {event.tenant_id!r}"
            )
        try:
            raise_if_forged(event, public_key_from_bytes(key.public_key))
        except IntegrityError:
            newer = key_for_seq(await self._keys(event.device_id, fresh=True), event.device_seq)
            if newer is None or newer == key:
                raise
            keys, key = await self._keys(event.device_id), newer
            raise_if_forged(event, public_key_from_bytes(key.public_key))
        skipped = self._skipped(event, headers, keys)
        return tuple(entries_of(event.tenant_id, event.event_id, OpLink.of(event), skipped))

    @staticmethod
    def _skipped(event: ChangeEvent, headers: Sequence[tuple[str, bytes]], keys: list[DeviceKey]) -> list[OpLink]:
        """The links of seqs the gateway refused right before this op, each checked against its key."""
        values = [value for name, value in headers if name == CHAIN_SKIPPED_HEADER]
        if not values:
            return []
        if len(values) > 1:
            raise IntegrityError(f"two {CHAIN_SKIPPED_HEADER} headers on one record")
        links = links_from_header(event.device_id, values[0])
        for link in links:
            if link.seq >= event.device_seq:
                raise IntegrityError(f"skipped seq {link.seq} is not before the op's seq {event.device_seq}")
            if link.is_gap:
                continue
            key = key_for_seq(keys, link.seq)
            if key is None:
                raise IntegrityError(f"skipped seq {link.seq} of device {event.device_id} predates its keys")
            check_link(link, public_key_from_bytes(key.public_key))
        return links


def signature_check(settings: Settings, pool: Pool) -> SignatureCheck:
    """The check on the keys of the live schema (`KEEL_PG_SCHEMA`), with the deployment's signing policy."""
    return SignatureCheck(PgDeviceKeyRegistry(pool, settings.pg_schema), require_signed=settings.require_signed_ops)
