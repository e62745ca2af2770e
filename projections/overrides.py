"""Manual overrides: turning `keel conflicts resolve` into an OVERRIDE event for the log.

An override is never a table write. It is a change event (op OVERRIDE) from device `operator:<actor>`, with
its own sequence number, a clock greater than every clock the entity has seen and `base_hlc` at the
entity's newest clock; `override.supersedes` names the events whose values it discards. It therefore wins
over every write it has seen (rank 1 at a later clock), loses to later edits made by someone who has seen
it, and survives every replay and rebuild because it lives in the log like any other change.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from keel.errors import ConfigurationError, ValidationError
from keel.event_log import LogWriter
from keel.hlc import HlcTimestamp, HybridLogicalClock
from projections.conflict_rules import ALL_FIELDS, Decision, EntityState
from projections.entity_tables import entity_tables
from projections.store import ProjectionStore
from schemas.catalog import Catalog, default_catalog
from schemas.envelope import ChangeEvent, Op, Override, new_event_id
from schemas.event_encoder import EventEncoder
from schemas.validation import validate_event

__all__ = ["Keep", "OperatorSequence", "OverrideRequest", "build_override", "resolve_decision"]

Keep = Literal["winner", "loser"]


@dataclass(frozen=True)
class OverrideRequest:
    """What the operator asked for: keep one side, or set values; why; and who."""

    decision_id: str
    reason: str
    actor: str
    keep: Keep | None = None
    set_values: Mapping[str, Any] = field(default_factory=dict)

    def raise_if_invalid(self) -> None:
        """ValidationError unless exactly one of keep / set is given and reason and actor are present."""
        if (self.keep is None) == (not self.set_values):
            raise ValidationError("give either --keep winner|loser or one or more --set field=value")
        if not self.reason.strip():
            raise ValidationError("an override needs a --reason", field="reason")
        if not self.actor.strip():
            raise ValidationError("an override needs an --actor", field="actor")


class OperatorSequence(Protocol):
    """Sequence numbers of operator-issued events (strictly increasing per operator)."""

    async def next_operator_seq(self) -> int:
        """The next number."""
        ...


def _newest_clock(state: EntityState | None) -> HlcTimestamp | None:
    clocks = [record.hlc for record in state.history] if state else []
    stamp = state.newest_stamp if state else None
    if stamp is not None:
        clocks.append(HlcTimestamp(stamp.physical_ms, stamp.logical, stamp.device_id))
    return max(clocks, default=None)


def _edit_values(state: EntityState | None, event_id: str) -> Mapping[str, Any]:
    for record in state.history if state else ():
        if record.event_id == event_id:
            return record.values
    raise ConfigurationError(
        f"event {event_id} is no longer in the entity's write history; restore it with --set field=value"
    )


def build_override(
    decision: Decision,
    state: EntityState | None,
    request: OverrideRequest,
    *,
    seq: int,
    now_ms: int | None = None,
    catalog: Catalog | None = None,
) -> ChangeEvent:
    """The OVERRIDE event that settles `decision` as requested (pure; validated against the current schema)."""
    request.raise_if_invalid()
    entity_type = decision.entity_type
    defaults = entity_tables(catalog)[entity_type].defaults()
    catalog = catalog or default_catalog()
    version = catalog.current_version(entity_type)
    visible = state.visible(defaults) if state else None
    device = f"operator:{request.actor.strip()}"
    newest = _newest_clock(state)
    wall = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    clock = HybridLogicalClock(device, wall=lambda: wall)
    hlc = clock.observe(newest) if newest is not None else clock.now()

    payload: dict[str, Any] | None
    supersedes: tuple[str, ...]
    if request.set_values:
        unknown = sorted(set(request.set_values) - set(defaults))
        if unknown:
            raise ValidationError(f"{entity_type} has no field {unknown[0]!r}", field=unknown[0])
        payload = {**(visible or defaults), **request.set_values}
        changed = tuple(request.set_values)
        supersedes = (decision.winner_event_id, decision.loser_event_id)
    elif decision.field != ALL_FIELDS:
        kept = decision.winner_value if request.keep == "winner" else decision.loser_value
        payload = {**(visible or defaults), decision.field: kept}
        changed = (decision.field,)
        supersedes = (decision.loser_event_id if request.keep == "winner" else decision.winner_event_id,)
    else:
        # A delete met a concurrent edit: keeping the delete deletes again; keeping the edit restores its values.
        delete_won = decision.rule == "delete-wins"
        keep_delete = (request.keep == "winner") == delete_won
        kept_id = decision.winner_event_id if request.keep == "winner" else decision.loser_event_id
        other_id = decision.loser_event_id if request.keep == "winner" else decision.winner_event_id
        supersedes = (other_id,)
        if keep_delete:
            payload, changed = None, ()
        else:
            payload = {**defaults, **_edit_values(state, kept_id)}
            changed = tuple(defaults)
    event = ChangeEvent(
        event_id=new_event_id(),
        tenant_id=decision.tenant_id,
        device_id=device,
        device_seq=seq,
        entity_type=entity_type,
        entity_id=decision.entity_id,
        op=Op.OVERRIDE,
        hlc=hlc,
        schema_version=version,
        payload=payload,
        changed_fields=changed,
        base_hlc=newest,
        override=Override(
            reason=request.reason.strip(),
            actor=request.actor.strip(),
            decision_id=decision.decision_id,
            supersedes=supersedes,
        ),
    )
    validate_event(event, catalog)
    return event


async def resolve_decision(
    request: OverrideRequest,
    *,
    store: ProjectionStore,
    sequence: OperatorSequence,
    encoder: EventEncoder,
    writer: LogWriter,
) -> ChangeEvent:
    """Build the override for a recorded decision and append it to the log (acks=all); the projector applies it."""
    request.raise_if_invalid()
    record = await store.decision(request.decision_id)
    if record is None:
        raise ConfigurationError(f"no decision matches {request.decision_id!r} (unknown, or an ambiguous prefix)")
    decision = record.decision
    state = await store.entity_state(decision.entity_type, decision.tenant_id, decision.entity_id)
    event = build_override(decision, state, request, seq=await sequence.next_operator_seq())
    await writer.write([await encoder.record(event)])
    return event
