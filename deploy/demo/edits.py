"""Writes in the version a device speaks: a plan's intent (newest model) rendered for v1, v2 or v3 of an entity.

The plan cannot know when a device of the rollout cohort moves from task v2 to v3, so it states intents in
the newest model and the fleet renders them at the moment of the write, the way an app's UI only offers the
fields of the model it runs: v1 has `notes` for `description`, no `priority`, no `DOING`; v2 has no
`labels` and no `due_at`; v3 keeps `due_at` in step with the free-text `due` as the projector's normalizer
does (`schemas.domain_migrations`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.catalog import Catalog, default_catalog
from schemas.domain_migrations import parse_due

__all__ = ["render"]


def render(
    entity_type: str, version: int, intent: Mapping[str, Any], catalog: Catalog | None = None
) -> dict[str, Any] | None:
    """The fields to write in `version`, or None when the version can express none of the intent."""
    fields = dict(intent)
    if entity_type == "task":
        if version == 1:
            if "description" in fields:
                fields["notes"] = fields.pop("description")
            if fields.get("status") == "DOING":
                fields["status"] = "TODO"
        if version >= 3 and "due" in fields:
            fields["due_at"] = parse_due(fields["due"])
    known = set((catalog or default_catalog()).schema(entity_type, version).field_names)
    rendered = {name: value for name, value in fields.items() if name in known}
    return rendered or None
