"""The AsyncAPI document follows the code: channels, messages, statuses and deprecations from schemas/, the
dead-letter headers from consumers.dead_letter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml

from consumers import dead_letter
from deploy.partners.asyncapi import (
    AVRO_SCHEMA_FORMAT,
    CHANGE_TOPIC_CONFIG,
    STATE_TOPIC_CONFIG,
    build_asyncapi,
    render_asyncapi,
    version_status,
)
from schemas.catalog import SCHEMAS_ROOT, Catalog, default_catalog
from schemas.envelope import TraceHeaders
from schemas.state_schema import state_value_schema


def _copy_catalog(tmp_path: Path, subjects: str | None = None) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_ROOT / "avro", root / "avro")
    (root / "subjects.toml").write_text(subjects or (SCHEMAS_ROOT / "subjects.toml").read_text())
    return root


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_asyncapi(default_catalog(), version="0.0.0-test")


def test_one_channel_per_entity_topic_with_one_message_per_schema_version(document: dict[str, Any]) -> None:
    catalog = default_catalog()
    addresses = {channel["address"]: channel for channel in document["channels"].values()}
    states = {f"keel.{entity}.state" for entity in catalog.entities()}
    assert set(addresses) == {f"keel.{entity}.changes" for entity in catalog.entities()} | states | {"keel.dlq"}
    for entity in catalog.entities():
        channel = addresses[f"keel.{entity}.changes"]
        messages = [_resolve(document, ref["$ref"]) for ref in channel["messages"].values()]
        assert [m["x-keel-schema-version"] for m in messages] == catalog.versions(entity)
        for message in messages:
            schema = catalog.schema(entity, message["x-keel-schema-version"])
            assert message["payload"] == {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": schema.envelope}
            fastavro.parse_schema(message["payload"]["schema"])
            assert message["x-keel-subject"] == f"keel.{entity}.changes-value", "TopicNameStrategy"
            assert message["bindings"]["kafka"]["schemaIdPayloadEncoding"] == "confluent"
            assert "entity_id" in message["bindings"]["kafka"]["key"]["description"]
        assert channel["x-keel-compatibility"] == catalog.policy(entity).compatibility
        assert channel["bindings"]["kafka"]["topicConfiguration"] == CHANGE_TOPIC_CONFIG


def test_one_compacted_state_channel_per_entity_with_the_generated_state_schema(document: dict[str, Any]) -> None:
    catalog = default_catalog()
    for entity in catalog.entities():
        channel = document["channels"][f"{entity}State"]
        assert channel["address"] == f"keel.{entity}.state"
        assert channel["bindings"]["kafka"]["topicConfiguration"] == STATE_TOPIC_CONFIG
        (ref,) = channel["messages"].values()
        message = _resolve(document, ref["$ref"])
        assert message["payload"]["schema"] == state_value_schema(catalog, entity)
        fastavro.parse_schema(message["payload"]["schema"])
        assert message["x-keel-subject"] == f"keel.{entity}.state-value"
        assert "<tenant_id>/<entity_id>" in message["bindings"]["kafka"]["key"]["description"]
        state = {f["name"]: f for f in message["payload"]["schema"]["fields"]}["state"]
        assert state["type"][1]["fields"] == catalog.schema(entity).payload["fields"], "the newest payload"
        assert f"receive{entity.capitalize()}State" in document["operations"]


def test_operations_reference_their_channels_messages(document: dict[str, Any]) -> None:
    for name, operation in document["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        assert name.endswith(channel_ref.rsplit("/", 1)[-1][:1].upper() + channel_ref.rsplit("/", 1)[-1][1:])
        for ref in operation["messages"]:
            assert ref["$ref"].startswith(channel_ref + "/messages/")
            _resolve(document, ref["$ref"])
    sends = [op for op in document["operations"].values() if op["action"] == "send"]
    assert all(op["x-keel-producer-config"]["partitioner"] == "murmur2_random" for op in sends)


def test_headers_are_the_trace_headers_of_the_envelope(document: dict[str, Any]) -> None:
    declared = set(document["components"]["schemas"]["ChangeHeaders"]["properties"])
    constants = {value for name, value in vars(TraceHeaders).items() if name.isupper() and isinstance(value, str)}
    assert declared == constants


def test_dead_letter_headers_are_those_the_projector_writes(document: dict[str, Any]) -> None:
    declared = document["components"]["schemas"]["DeadLetterHeaders"]
    written = {
        dead_letter.SOURCE_TOPIC,
        dead_letter.SOURCE_PARTITION,
        dead_letter.SOURCE_OFFSET,
        dead_letter.ERROR_CLASS,
        dead_letter.ERROR_MESSAGE,
        dead_letter.SCHEMA_ID,
    }
    assert set(declared["properties"]) == written
    assert set(declared["required"]) == written
    channel = document["channels"]["deadLetters"]
    assert channel["address"] == "keel.dlq"
    assert _resolve(document, channel["messages"]["deadLetter"]["$ref"])["headers"] == {
        "$ref": "#/components/schemas/DeadLetterHeaders"
    }


@pytest.mark.parametrize(
    ("minimum", "stable", "newest", "statuses"),
    [
        (2, 2, 2, ["retired", "stable", "staged"]),
        (1, 2, 3, ["deprecated", "stable", "rollout"]),
        (1, 1, 3, ["stable", "rollout", "rollout"]),
    ],
)
def test_statuses_follow_subjects_toml(
    tmp_path: Path, minimum: int, stable: int, newest: int, statuses: list[str]
) -> None:
    subjects = (
        "[defaults]\ncompatibility = 'BACKWARD_TRANSITIVE'\n"
        f"[entities.task]\ncompatibility = 'FULL_TRANSITIVE'\nminimum_version = {minimum}\n"
        f"stable_version = {stable}\nnewest_version = {newest}\n"
    )
    catalog = Catalog.load(_copy_catalog(tmp_path, subjects))
    assert [version_status(catalog, "task", v) for v in (1, 2, 3)] == statuses
    document = build_asyncapi(catalog, version="1")
    assert [document["components"]["messages"][f"taskChangeV{v}"]["x-keel-status"] for v in (1, 2, 3)] == statuses
    assert document["channels"]["taskChanges"]["x-keel-versions"] == {
        "minimum": minimum,
        "stable": stable,
        "newest": newest,
        "current": catalog.current_version("task"),
    }
    assert document["channels"]["projectChanges"]["x-keel-compatibility"] == "BACKWARD_TRANSITIVE", "the default"


def test_deprecated_fields_are_listed_per_version(document: dict[str, Any]) -> None:
    catalog = default_catalog()
    for entity in catalog.entities():
        for version in catalog.versions(entity):
            message = document["components"]["messages"][f"{entity}ChangeV{version}"]
            marked = [raw["name"] for raw in catalog.schema(entity, version).payload["fields"] if "deprecated" in raw]
            assert [d["field"] for d in message.get("x-keel-deprecated-fields", [])] == marked
    assert document["components"]["messages"]["taskChangeV3"]["x-keel-deprecated-fields"][0]["field"] == "due"


def test_sensitive_fields_come_from_policy_and_leave_the_avro_schema_as_registered(document: dict[str, Any]) -> None:
    catalog = default_catalog()
    message = document["components"]["messages"]["commentChangeV1"]
    assert message["x-keel-sensitive-fields"] == ["body"]
    assert message["payload"]["schema"] == catalog.schema("comment", 1).envelope
    assert "keel.sensitive" not in json.dumps(document)
    assert "x-keel-sensitive-fields" not in document["components"]["messages"]["taskChangeV1"]


def test_a_new_entity_in_the_catalog_appears_without_touching_the_generator(tmp_path: Path) -> None:
    root = _copy_catalog(tmp_path)
    (root / "avro" / "label").mkdir()
    payload = {"type": "record", "name": "Label", "fields": [{"name": "text", "type": "string", "default": ""}]}
    (root / "avro" / "label" / "label.v1.avsc").write_text(json.dumps(payload))
    document = build_asyncapi(Catalog.load(root), version="1")
    assert document["channels"]["labelChanges"]["address"] == "keel.label.changes"
    assert "receiveLabelChanges" in document["operations"]
    assert document["components"]["messages"]["labelChangeV1"]["payload"]["schema"]["name"] == "LabelChange"


def test_the_topic_prefix_names_every_address(tmp_path: Path) -> None:
    document = build_asyncapi(default_catalog(), topic_prefix="acme", version="1")
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert all(address.startswith("acme.") for address in addresses)
    assert "`acme.dlq`" in document["info"]["description"]


def test_rendering_is_deterministic_and_round_trips(document: dict[str, Any]) -> None:
    text = render_asyncapi(document)
    assert text == render_asyncapi(build_asyncapi(default_catalog(), version="0.0.0-test"))
    assert text.startswith("# Generated by `keel partners asyncapi`")
    assert yaml.safe_load(text) == document
    assert "description: |\n" in text, "multi-line text is a literal block"
    assert "&id0" not in text, "no YAML anchors: every value written out"
