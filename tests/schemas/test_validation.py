"""Validation names the first offending field in declaration order, whichever path finds it."""

from __future__ import annotations

from typing import Any

import pytest
from fastavro.validation import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.errors import ValidationError
from schemas.catalog import EntitySchema, default_catalog
from schemas.validation import RANGE_RULES, validate_payload
from tests.schemas.strategies import every_version, payloads

CATALOG = default_catalog()
VERSIONS = every_version(CATALOG)
WRONG = [object(), 3.5, "text", -1, None, ["x"], {"k": 1}, 2**40]


def first_problem(entity: str, schema: EntitySchema, payload: dict[str, Any]) -> str | None:
    """The field the per-field rules (types, then ranges, field by field) reject first."""
    complete = {spec.name: spec.default for spec in schema.fields if spec.has_default} | payload
    for spec in schema.fields:
        value = complete[spec.name]
        if not validate(value, spec.avro_type, raise_errors=False):
            return spec.name
        if any(check(value) for check in RANGE_RULES.get((entity, spec.name), ())):
            return spec.name
    return None


@pytest.mark.parametrize(("entity", "version"), VERSIONS, ids=[f"{e}-v{v}" for e, v in VERSIONS])
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_the_field_named_is_the_first_the_per_field_rules_reject(
    entity: str, version: int, data: st.DataObject
) -> None:
    schema = CATALOG.schema(entity, version)
    payload = dict(data.draw(payloads(schema)))
    for name in data.draw(st.sets(st.sampled_from(schema.field_names), max_size=3)):
        payload[name] = data.draw(st.sampled_from(WRONG))
    expected = first_problem(entity, schema, payload)
    if expected is None:
        validate_payload(entity, version, payload, (), CATALOG)
        return
    with pytest.raises(ValidationError) as refused:
        validate_payload(entity, version, payload, (), CATALOG)
    assert refused.value.field == expected
