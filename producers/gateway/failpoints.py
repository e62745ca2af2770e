"""Failpoints: named places where a test makes the gateway crash or fail on purpose (off unless configured).

`KEEL_GATEWAY_FAILPOINTS="after-produce=kill"` makes the process SIGKILL itself right after the broker
acknowledged a push and before the ledger commit and the HTTP answer — the worst moment to die, which
the fault tests need to hit exactly rather than by timing. `before-produce` fires just before the records
are handed to the producer (the broker never sees them), `after-commit` after the ledger commit, before
the answer. Actions: `kill` (SIGKILL this process) and `unavailable` (raise ServiceUnavailableError).
Never configure failpoints in production.
"""

from __future__ import annotations

import os
import signal

from keel.errors import ConfigurationError, ServiceUnavailableError
from keel.logging import get_logger

__all__ = ["FAILPOINT_NAMES", "Failpoints"]

FAILPOINT_NAMES = ("before-produce", "after-produce", "after-commit")
_ACTIONS = ("kill", "unavailable")
_log = get_logger("gateway.failpoints")


class Failpoints:
    """Parsed `name=action,…` specification."""

    def __init__(self, spec: str = "") -> None:
        self.actions: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, action = part.partition("=")
            if name not in FAILPOINT_NAMES or action not in _ACTIONS:
                raise ConfigurationError(
                    f"bad failpoint {part!r}: expected one of {FAILPOINT_NAMES} = one of {_ACTIONS}"
                )
            self.actions[name] = action
        if self.actions:
            _log.warning("failpoints armed", failpoints=self.actions)

    def hit(self, name: str) -> None:
        """Act if the failpoint `name` is armed."""
        action = self.actions.get(name)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "unavailable":
            raise ServiceUnavailableError("failpoint", name)
