"""Enrollment and handshakes: who a device is, which versions it speaks, and the token it pushes and pulls with."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from keel.errors import ConfigurationError, ForbiddenError
from keel.hlc import wall_clock_ms
from producers.gateway.devices import DeviceDirectory
from producers.gateway.metrics import GatewayMetrics
from producers.gateway.push_ledger import PushLedger
from producers.gateway.rollout import RolloutFlags, policies_with_flags
from producers.gateway.tokens import TokenAuthority
from producers.wire import EnrollRequest, EnrollResponse, HandshakeRequest, HandshakeResponse, Limits
from projections.device_keys import DeviceKey, DeviceKeyRegistry
from schemas.catalog import Catalog, EntityPolicy, default_catalog
from schemas.negotiation import negotiate

__all__ = ["SessionService"]


class SessionService:
    """Answers /v1/enroll and /v1/handshake."""

    def __init__(
        self,
        *,
        directory: DeviceDirectory,
        ledger: PushLedger,
        tokens: TokenAuthority,
        limits: Limits,
        enrollment_secret: str | None,
        catalog: Catalog | None = None,
        policies: Mapping[str, EntityPolicy] | None = None,
        rollout: RolloutFlags | None = None,
        device_keys: DeviceKeyRegistry | None = None,
        wall: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._directory = directory
        self._ledger = ledger
        self._tokens = tokens
        self._limits = limits
        self._enrollment_secret = enrollment_secret
        self._catalog = catalog or default_catalog()
        self.policies = dict(policies or {})
        self._rollout = rollout
        self._device_keys = device_keys
        self._wall = wall

    async def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """Register a device when the enrollment secret matches."""
        expected = self._enrollment_secret
        if not expected:
            raise ForbiddenError("enrollment is disabled on this gateway (no enrollment secret configured)")
        if not hmac.compare_digest(expected.encode(), request.enrollment_secret.encode()):
            raise ForbiddenError("wrong enrollment secret")
        record, secret = await self._directory.enroll(request.tenant_id, request.device_id, request.label)
        if request.public_key is not None:
            # From now on every op of this device must be signed by this key (docs/security.md).
            if self._device_keys is None:
                raise ConfigurationError("this gateway has no device-key registry")
            key = DeviceKey(record.tenant_id, record.device_id, bytes.fromhex(request.public_key))
            await self._device_keys.register(key)
        return EnrollResponse(tenant_id=record.tenant_id, device_id=record.device_id, device_secret=secret)

    async def handshake(self, request: HandshakeRequest) -> HandshakeResponse:
        """Authenticate, negotiate (UpgradeRequiredError below the minimum), issue a token."""
        await self._directory.authenticate(request.tenant_id, request.device_id, request.device_secret)
        policies = self.policies
        if self._rollout is not None:
            # Read at every handshake, so a flag set on one instance reaches every instance's next handshake.
            policies = policies_with_flags(self._catalog, await self._rollout.flags(), policies)
        agreed = negotiate(request.versions, request.tenant_id, request.device_id, self._catalog, policies or None)
        await self._directory.record_handshake(request.device_id, agreed.versions)
        GatewayMetrics().negotiated(agreed.versions)
        head = await self._ledger.head(request.device_id)
        head_hash = await self._ledger.head_hash(request.device_id) if head else None
        token, expires_at_ms = await self._tokens.issue(request.tenant_id, request.device_id, agreed.versions)
        return HandshakeResponse(
            token=token,
            token_expires_at_ms=expires_at_ms,
            versions=agreed.versions,
            in_cohort=agreed.in_cohort,
            unsupported=agreed.unsupported,
            server_time_ms=self._wall(),
            head_seq=head,
            head_hash=head_hash.hex() if head_hash is not None else None,
            limits=self._limits,
        )
