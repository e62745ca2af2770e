"""What the device stores as JSON: merged entity states and op-log events.

States use the projector's own codec (`projections.state_codec`: per-field values with their write stamps,
the tombstone, recent writes), so a device row and a server row hold the same thing; the tenant is kept
beside it because the device's tables are keyed by entity id alone. Events use the wire form.
"""

from __future__ import annotations

import json
from typing import Any

from producers.wire import WireEvent
from projections.conflict_rules import EntityState
from projections.state_codec import state_from_json, state_to_json
from schemas.envelope import ChangeEvent

__all__ = ["dumps_event", "dumps_state", "loads_event", "loads_state"]


def dumps_state(state: EntityState) -> str:
    """Compact JSON text of a state."""
    body: dict[str, Any] = {"tenant": state.tenant_id, **state_to_json(state)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def loads_state(text: str, entity_type: str, entity_id: str) -> EntityState:
    """Inverse of `dumps_state`."""
    body = json.loads(text)
    return state_from_json(str(body.pop("tenant")), entity_type, entity_id, body)


def dumps_event(event: ChangeEvent) -> str:
    """Compact JSON text of an event (bytes as hex)."""
    return WireEvent.of(event).model_dump_json()


def loads_event(text: str) -> ChangeEvent:
    """Inverse of `dumps_event`."""
    return WireEvent.model_validate_json(text).to_event()
