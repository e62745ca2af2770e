"""One contract, two implementations: the in-memory fake and the real registry behave alike."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from keel.errors import ConfigurationError, IncompatibleSchemaError, UnknownSchemaError
from schemas.registry import InMemorySchemaRegistry, SchemaRegistry
from schemas.registry_adapter import ConfluentSchemaRegistry
from tests.support.naming import unique
from tests.support.services import Services

V1 = {"type": "record", "name": "Thing", "namespace": "contract", "fields": [{"name": "a", "type": "string"}]}
V2_OK = {
    "type": "record",
    "name": "Thing",
    "namespace": "contract",
    "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "int", "default": 0}],
}
V2_BAD = {
    "type": "record",
    "name": "Thing",
    "namespace": "contract",
    "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "int"}],
}


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[SchemaRegistry]:
    if request.param == "fake":
        yield InMemorySchemaRegistry()
        return
    services: Services = request.getfixturevalue("services")
    real = ConfluentSchemaRegistry(services.registry_url)
    try:
        yield real
    finally:
        await real.close()


async def test_register_is_idempotent_and_ids_resolve(registry: SchemaRegistry) -> None:
    subject = unique("contract") + "-value"
    first = await registry.register(subject, json.dumps(V1))
    assert await registry.register(subject, json.dumps(V1, indent=2)) == first
    assert json.loads(await registry.get_schema(first)) == V1
    assert await registry.versions(subject) == [1]
    latest = await registry.get_version(subject)
    assert (latest.version, latest.schema_id) == (1, first)
    found = await registry.lookup(subject, json.dumps(V1))
    assert found is not None
    assert found.schema_id == first
    assert await registry.lookup(subject, json.dumps(V2_OK)) is None
    assert subject in await registry.subjects()


async def test_a_version_reads_back_as_registered_even_after_looking_up_an_edited_text(
    registry: SchemaRegistry,
) -> None:
    # Registries may match canonical forms (Apicurio ignores docs); what they hold must not change with it.
    subject = unique("contract") + "-value"
    schema_id = await registry.register(subject, json.dumps(V1))
    edited = {**V1, "doc": "added after registration"}
    found = await registry.lookup(subject, json.dumps(edited))
    assert found is None or json.loads(found.schema) == V1
    held = await registry.get_version(subject, 1)
    assert (held.version, held.schema_id, json.loads(held.schema)) == (1, schema_id, V1)
    assert json.loads((await registry.get_version(subject)).schema) == V1
    assert json.loads(await registry.get_schema(schema_id)) == V1
    with pytest.raises(ConfigurationError, match="has no version 7"):
        await registry.get_version(subject, 7)
    with pytest.raises(ConfigurationError):
        await registry.get_version(unique("nobody") + "-value", 1)


async def test_unknown_ids_and_subjects(registry: SchemaRegistry) -> None:
    with pytest.raises(UnknownSchemaError):
        await registry.get_schema(987_654_321)
    assert await registry.versions(unique("nobody") + "-value") == []


async def test_subject_level_refuses_breaking_change(registry: SchemaRegistry) -> None:
    subject = unique("contract") + "-value"
    await registry.register(subject, json.dumps(V1))
    await registry.set_compatibility("BACKWARD", subject)
    assert await registry.get_compatibility(subject) == "BACKWARD"
    bad = await registry.test_compatibility(subject, json.dumps(V2_BAD))
    assert not bad.is_compatible
    with pytest.raises(IncompatibleSchemaError):
        await registry.register(subject, json.dumps(V2_BAD))
    good = await registry.test_compatibility(subject, json.dumps(V2_OK))
    assert good.is_compatible
    assert await registry.register(subject, json.dumps(V2_OK)) > 0
    assert await registry.versions(subject) == [1, 2]


async def test_test_compatibility_honours_transitive_levels(registry: SchemaRegistry) -> None:
    """A schema fine against the latest version but not an older one is refused at a _TRANSITIVE level."""
    subject = unique("contract") + "-value"

    def thing(*fields: dict[str, object]) -> str:
        return json.dumps({"type": "record", "name": "Thing", "namespace": "contract", "fields": list(fields)})

    await registry.register(subject, thing({"name": "a", "type": "string", "default": ""}))
    await registry.set_compatibility("BACKWARD_TRANSITIVE", subject)
    await registry.register(subject, thing())
    comeback = thing({"name": "a", "type": "int", "default": 0})
    report = await registry.test_compatibility(subject, comeback)
    assert not report.is_compatible
    with pytest.raises(IncompatibleSchemaError):
        await registry.register(subject, comeback)
    await registry.set_compatibility("BACKWARD", subject)
    assert (await registry.test_compatibility(subject, comeback)).is_compatible
