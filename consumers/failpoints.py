"""Failpoints: named places where a test makes the projector die on purpose (off unless configured).

`KEEL_PROJECTOR_FAILPOINTS="in-transaction=kill@3"` makes the process SIGKILL itself the third time it
reaches the point — the resilience battery (`keel chaos run R1`) needs to hit exactly the moments that
matter rather than by timing:

- `in-transaction`: inside the batch's PostgreSQL transaction, every write done, before COMMIT;
- `after-store-commit`: the batch committed in PostgreSQL, its Kafka offset commit not yet sent;
- `mid-rebalance`: in the revoke callback of a rebalance, while the member still owns partitions.

Actions: `kill` (SIGKILL this process) and `unavailable` (raise ServiceUnavailableError). `@N` counts hits
(default 1). Like the gateway's (`producers/gateway/failpoints.py`); never configure failpoints in production.
"""

from __future__ import annotations

import os
import signal

from keel.errors import ConfigurationError, ServiceUnavailableError
from keel.logging import get_logger

__all__ = ["FAILPOINT_NAMES", "Failpoints"]

FAILPOINT_NAMES = ("in-transaction", "after-store-commit", "mid-rebalance")
_ACTIONS = ("kill", "unavailable")
_log = get_logger("projector.failpoints")


class Failpoints:
    """Parsed `name=action[@hit],…` specification, and how often each point was reached."""

    def __init__(self, spec: str = "") -> None:
        self.actions: dict[str, tuple[str, int]] = {}
        self.hits: dict[str, int] = dict.fromkeys(FAILPOINT_NAMES, 0)
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, rest = part.partition("=")
            action, _, at = rest.partition("@")
            if name not in FAILPOINT_NAMES or action not in _ACTIONS or (at and not at.isdigit()) or at == "0":
                raise ConfigurationError(
                    f"bad failpoint {part!r}: expected one of {FAILPOINT_NAMES} = one of {_ACTIONS}, "
                    "optionally @N (N ≥ 1)"
                )
            self.actions[name] = (action, int(at or 1))
        if self.actions:
            _log.warning("failpoints armed", failpoints={k: f"{a}@{n}" for k, (a, n) in self.actions.items()})

    def hit(self, name: str) -> None:
        """Count a visit of `name`; act when it is armed and this is the chosen visit."""
        self.hits[name] = self.hits.get(name, 0) + 1
        armed = self.actions.get(name)
        if armed is None or armed[1] != self.hits[name]:
            return
        if armed[0] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise ServiceUnavailableError("failpoint", name)
