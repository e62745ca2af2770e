"""Wire models: event ids arrive in any form `uuid.UUID` reads and leave in the canonical one."""

from __future__ import annotations

import pytest
from pydantic import ValidationError as PydanticValidationError

from keel.hlc import HlcTimestamp
from producers.wire import WireEvent
from schemas.envelope import ChangeEvent, Op

CANONICAL = "e3e70682-c209-4cac-a29f-6fbed82c07cd"


def wire(event_id: str) -> dict[str, object]:
    event = ChangeEvent(CANONICAL, "acme", "d-1", 1, "task", "t-1", Op.DELETE, HlcTimestamp(1, 0, "d-1"), 2)
    return {**WireEvent.of(event).model_dump(mode="json"), "event_id": event_id}


@pytest.mark.parametrize(
    "event_id",
    [CANONICAL, CANONICAL.upper(), "{" + CANONICAL + "}", "urn:uuid:" + CANONICAL, CANONICAL.replace("-", "")],
)
def test_event_ids_are_normalised(event_id: str) -> None:
    assert WireEvent.model_validate(wire(event_id)).event_id == CANONICAL


@pytest.mark.parametrize("event_id", ["", "not-a-uuid", CANONICAL[:-1], CANONICAL + "0"])
def test_event_ids_that_are_no_uuids_are_refused(event_id: str) -> None:
    with pytest.raises(PydanticValidationError):
        WireEvent.model_validate(wire(event_id))
