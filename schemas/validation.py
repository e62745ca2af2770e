"""Validation before anything is applied: types, required fields and value ranges.

Avro types are checked against the writer's version of the payload schema; domain ranges come from
`RANGE_RULES`. Every failure is a `ValidationError` (permanent: the consumer routes it to the DLQ, the
gateway rejects the op) that names the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastavro.validation import validate

from keel.errors import ValidationError
from schemas.catalog import Catalog, default_catalog
from schemas.envelope import ChangeEvent, Op

__all__ = ["RANGE_RULES", "validate_event", "validate_payload"]

MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 10_000

Check = Callable[[Any], str | None]


def _length_at_most(limit: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and len(value) > limit:
            return f"is {len(value)} characters long, the limit is {limit}"
        return None

    return check


def _between(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, int) and not low <= value <= high:
            return f"is {value}, outside {low}..{high}"
        return None

    return check


def _at_most_items(limit: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, list) and len(value) > limit:
            return f"has {len(value)} items, the limit is {limit}"
        return None

    return check


# (entity, field) → checks; fields absent from a version are simply not checked for it.
RANGE_RULES: dict[tuple[str, str], tuple[Check, ...]] = {
    ("task", "title"): (_length_at_most(500),),
    ("task", "description"): (_length_at_most(MAX_TEXT_LENGTH),),
    ("task", "notes"): (_length_at_most(MAX_TEXT_LENGTH),),
    ("task", "priority"): (_between(0, 3),),
    ("task", "labels"): (_at_most_items(20),),
    ("project", "name"): (_length_at_most(200),),
    ("comment", "body"): (_length_at_most(MAX_TEXT_LENGTH),),
}


def validate_payload(
    entity: str,
    version: int,
    payload: dict[str, Any],
    changed_fields: tuple[str, ...] = (),
    catalog: Catalog | None = None,
) -> None:
    """Raise ValidationError unless `payload` is a valid `entity` payload of `version`."""
    schema = (catalog or default_catalog()).schema(entity, version)
    unknown = [name for name in changed_fields if name not in schema.field_names]
    if unknown:
        raise ValidationError(f"{entity} v{version} has no field {unknown[0]!r}", field=unknown[0])
    for spec in schema.fields:
        if spec.name not in payload and not spec.has_default:
            raise ValidationError(f"{entity} v{version}: required field {spec.name!r} is missing", field=spec.name)
    complete = {spec.name: spec.default for spec in schema.fields if spec.has_default} | payload
    extra = sorted(set(payload) - set(schema.field_names))
    if extra:
        raise ValidationError(f"{entity} v{version} has no field {extra[0]!r}", field=extra[0])
    # One call over the parsed record when everything fits; field by field (parsing each type) only to name
    # the first field that does not — the same field and message as checking each field in turn.
    fits = validate(complete, schema.parsed_payload, raise_errors=False)
    for spec in schema.fields:
        value = complete[spec.name]
        if not fits and not validate(value, spec.avro_type, raise_errors=False):
            raise ValidationError(
                f"{entity} v{version}: field {spec.name!r} has {type(value).__name__} {value!r:.60}, "
                f"which is not a valid {_type_name(spec.avro_type)}",
                field=spec.name,
            )
        for check in RANGE_RULES.get((entity, spec.name), ()):
            problem = check(value)
            if problem is not None:
                raise ValidationError(f"{entity} v{version}: field {spec.name!r} {problem}", field=spec.name)


def _type_name(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return " or ".join(_type_name(t) for t in avro_type)
    if isinstance(avro_type, dict):
        return str(avro_type.get("logicalType") or avro_type.get("type"))
    return str(avro_type)


def validate_event(event: ChangeEvent, catalog: Catalog | None = None) -> None:
    """Envelope rules, then the payload in the writer's version."""
    catalog = catalog or default_catalog()
    for name, value in (("tenant_id", event.tenant_id), ("device_id", event.device_id), ("entity_id", event.entity_id)):
        if not value or len(value) > MAX_ID_LENGTH:
            raise ValidationError(f"{name} must be 1..{MAX_ID_LENGTH} characters", field=name)
    if event.device_seq < 1:
        raise ValidationError(f"device_seq must be >= 1, got {event.device_seq}", field="device_seq")
    if event.entity_type not in catalog.schemas:
        raise ValidationError(f"unknown entity type {event.entity_type!r}", field="entity_type")
    if event.schema_version not in catalog.versions(event.entity_type):
        raise ValidationError(
            f"{event.entity_type} has no schema version {event.schema_version}", field="schema_version"
        )
    if event.op is Op.DELETE:
        if event.payload is not None:
            raise ValidationError("a DELETE carries no payload", field="payload")
        return
    if event.payload is None:
        if event.op is Op.OVERRIDE:
            return  # an override that deletes
        raise ValidationError(f"an {event.op.value} needs a payload", field="payload")
    validate_payload(event.entity_type, event.schema_version, event.payload, event.changed_fields, catalog)
