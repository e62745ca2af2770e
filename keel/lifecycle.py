"""Service lifecycles as enums with checked transitions (STARTING → RUNNING → DRAINING → STOPPED)."""

from __future__ import annotations

import enum

from keel.errors import KeelError

__all__ = ["Lifecycle", "LifecycleError", "State"]


class State(enum.Enum):
    """Where a long-running component is in its life."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


_ALLOWED: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.STARTING, State.STOPPED}),
    State.STARTING: frozenset({State.RUNNING, State.FAILED, State.DRAINING, State.STOPPED}),
    State.RUNNING: frozenset({State.DRAINING, State.FAILED}),
    State.DRAINING: frozenset({State.STOPPED, State.FAILED}),
    State.STOPPED: frozenset(),
    State.FAILED: frozenset({State.STOPPED}),
}


class LifecycleError(KeelError):
    """A component was asked to move to a state it cannot reach from where it is."""


class Lifecycle:
    """The current state of one component; `move_to` refuses transitions the diagram does not allow."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = State.NEW

    def move_to(self, target: State) -> None:
        """Transition to `target`, or raise `LifecycleError`."""
        if target not in _ALLOWED[self.state]:
            raise LifecycleError(f"{self.name}: cannot go from {self.state.value} to {target.value}")
        self.state = target

    @property
    def is_running(self) -> bool:
        """True while the component accepts work."""
        return self.state is State.RUNNING
