"""The gateway as a component: its ports wired into the session, push, pull and state services, with a lifecycle.

`Gateway` takes ports only (directory, ledger, log writer, registry, outbox, state source), so unit tests
build it from the in-memory fakes and `producers/gateway/service.py` from the real adapters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keel.errors import IncompatibleSchemaError, KeelError, ServiceUnavailableError
from keel.event_log import LogWriter
from keel.lifecycle import Lifecycle, State
from keel.logging import get_logger
from keel.settings import Settings
from producers.gateway.backpressure import DeviceRateLimiter, ProducerBudget
from producers.gateway.devices import DeviceDirectory
from producers.gateway.failpoints import Failpoints
from producers.gateway.op_verification import ChainVerifier
from producers.gateway.outbox_signals import OutboxSignals
from producers.gateway.pull import OutboxWatcher, PullService
from producers.gateway.push import PushLimits, PushService
from producers.gateway.push_ledger import PushLedger
from producers.gateway.rollout import RolloutFlags
from producers.gateway.sessions import SessionService
from producers.gateway.signing_keys import SigningKeyStore
from producers.gateway.state_sync import StateService, StateSource
from producers.gateway.tokens import TokenAuthority
from producers.wire import Limits
from projections.device_keys import DeviceKeyRegistry, InMemoryDeviceKeyRegistry
from projections.outbox import OutboxReader
from schemas.catalog import Catalog, default_catalog
from schemas.domain_migrations import default_registry
from schemas.event_encoder import EventEncoder
from schemas.governance import register_subjects
from schemas.migrations import MigrationRegistry
from schemas.registry import SchemaRegistry

__all__ = ["Gateway", "GatewayPorts"]

_log = get_logger("gateway")


@dataclass
class GatewayPorts:
    """Everything the gateway talks to."""

    directory: DeviceDirectory
    ledger: PushLedger
    writer: LogWriter
    registry: SchemaRegistry
    outbox: OutboxReader
    states: StateSource
    rollout: RolloutFlags | None = None  # live rollout cohorts; None = subjects.toml only
    signing_keys: SigningKeyStore | None = None  # token keys shared by instances; None = one in-memory key
    device_keys: DeviceKeyRegistry | None = None  # devices' op-signing keys; None = in memory
    signals: OutboxSignals | None = None  # the projector's outbox notifications; None = polling only


class Gateway:
    """Sessions, push, pull and digests over a set of ports."""

    def __init__(
        self,
        ports: GatewayPorts,
        settings: Settings,
        *,
        tokens: TokenAuthority | None = None,
        catalog: Catalog | None = None,
        migrations: MigrationRegistry | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.ports = ports
        self.settings = settings
        self.catalog = catalog or default_catalog()
        self.migrations = migrations or default_registry()
        self.lifecycle = Lifecycle("gateway")
        self._on_stop = on_stop
        if tokens is None:
            key_file = settings.gateway_signing_key_file
            ttl = settings.gateway_token_ttl_s
            if key_file:
                tokens = TokenAuthority.from_pem_file(key_file, ttl_s=ttl)
            elif ports.signing_keys is not None:
                tokens = TokenAuthority(
                    store=ports.signing_keys, ttl_s=ttl, refresh_s=settings.gateway_token_keys_refresh_s
                )
            else:
                tokens = TokenAuthority.generate(ttl_s=ttl)
        self.tokens = tokens
        self.device_keys = ports.device_keys if ports.device_keys is not None else InMemoryDeviceKeyRegistry()
        self.limits = Limits(
            max_batch_ops=settings.gateway_max_batch_ops,
            max_body_bytes=settings.gateway_max_body_bytes,
            max_op_bytes=settings.gateway_max_op_bytes,
        )
        self.encoder = EventEncoder(
            ports.registry, settings.topic_for, catalog=self.catalog, auto_register=settings.gateway_register_schemas
        )
        self.sessions = SessionService(
            directory=ports.directory,
            ledger=ports.ledger,
            tokens=self.tokens,
            limits=self.limits,
            enrollment_secret=settings.gateway_enrollment_secret,
            catalog=self.catalog,
            rollout=ports.rollout,
            device_keys=self.device_keys,
        )
        self.push = PushService(
            ledger=ports.ledger,
            writer=ports.writer,
            encoder=self.encoder,
            rate_limiter=DeviceRateLimiter(settings.gateway_device_rate_per_s, settings.gateway_device_burst),
            budget=ProducerBudget(settings.gateway_producer_buffer_bytes),
            limits=PushLimits(
                max_batch_ops=settings.gateway_max_batch_ops,
                max_op_bytes=settings.gateway_max_op_bytes,
                produce_timeout_s=settings.gateway_produce_timeout_s,
            ),
            catalog=self.catalog,
            failpoints=Failpoints(settings.gateway_failpoints),
            chains=ChainVerifier(self.device_keys, require_signed=settings.require_signed_ops),
        )
        self.watcher = OutboxWatcher(
            ports.outbox,
            interval_s=settings.gateway_outbox_poll_s,
            signals=ports.signals,
            fallback_interval_s=settings.gateway_outbox_fallback_poll_s,
        )
        self.pull = PullService(
            ports.outbox, self.watcher, self.migrations, max_wait_s=settings.gateway_pull_max_wait_s
        )
        self.state = StateService(ports.states, self.migrations, self.catalog)

    async def register_schemas(self) -> None:
        """Register missing subject versions (oldest first) and set each subject's level; outages only warn."""
        try:
            outcomes = await register_subjects(self.ports.registry, self.catalog, self.settings.topic_prefix)
        except (ServiceUnavailableError, IncompatibleSchemaError) as error:
            _log.warning("schema registration deferred to the first push", error=str(error))
            return
        problems = [o.error or "; ".join(str(i) for i in o.check.issues) for o in outcomes if not o.is_ok]
        if problems:
            _log.warning("schema registration incomplete", problems=problems)

    async def start(self) -> None:
        """Connect the producer, register schemas, watch the outbox."""
        self.lifecycle.move_to(State.STARTING)
        try:
            if self.settings.gateway_register_schemas:
                await self.register_schemas()
            await self.tokens.start()
            await self.ports.writer.start()
            await self.watcher.start()
        except KeelError:
            self.lifecycle.move_to(State.FAILED)
            await self.stop()
            raise
        self.lifecycle.move_to(State.RUNNING)
        _log.info("gateway running", topic_prefix=self.settings.topic_prefix, limits=self.limits.model_dump())

    def begin_drain(self) -> None:
        """Refuse new requests (503) and end long-polls and streams now, so a shutdown does not wait for them."""
        if self.lifecycle.state is State.RUNNING:
            self.lifecycle.move_to(State.DRAINING)
        self.pull.draining = True
        self.watcher.wake_all()

    async def stop(self) -> None:
        """Stop watching, flush the producer, release connections (idempotent)."""
        if self.lifecycle.state is State.STOPPED:
            return
        if self.lifecycle.state in (State.RUNNING, State.STARTING):
            self.lifecycle.move_to(State.DRAINING)
        await self.watcher.stop()
        await self.ports.writer.stop()
        await self.ports.registry.close()
        if self._on_stop is not None:
            await self._on_stop()
        self.lifecycle.move_to(State.STOPPED)
        _log.info("gateway stopped")
