"""Offline compatibility at Confluent's levels on the Avro specification's cases, and the explanations given."""

from __future__ import annotations

import json

import pytest

from keel.errors import ConfigurationError
from schemas.compatibility import check_compatibility, qualify_aliases
from tests.schemas.reference_cases import (
    A_INT,
    CHAIN_CASES,
    LEVELS,
    PAIR_CASES,
    ChainCase,
    PairCase,
    enum,
    f,
    inner,
    record,
)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", PAIR_CASES, ids=[c.name for c in PAIR_CASES])
def test_reference_pairs_at_every_level(case: PairCase, level: str) -> None:
    result = check_compatibility(case.new, [case.old], level)
    assert result.is_compatible is case.expected(level)
    assert result.level == level
    assert bool(result.problems) is not result.is_compatible, "an incompatible verdict always says why"


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", CHAIN_CASES, ids=[c.name for c in CHAIN_CASES])
def test_transitive_levels_compare_with_every_previous_version(case: ChainCase, level: str) -> None:
    result = check_compatibility(case.new, list(case.previous), level)
    assert result.is_compatible is case.verdicts[level]
    if not result.is_compatible and level.endswith("_TRANSITIVE") and case.verdicts[level.removesuffix("_TRANSITIVE")]:
        assert {p.other_version for p in result.problems} == {1}, "only the older version breaks"


def _messages(new: str, old: str, level: str) -> list[str]:
    return [p.message for p in check_compatibility(new, [old], level).problems]


def test_added_field_without_default_is_explained_with_the_fix() -> None:
    (problem,) = check_compatibility(record(A_INT, f("owner", "string")), [record(A_INT)], "BACKWARD").problems
    assert problem.location == "owner"
    assert problem.kind == "reader_field_missing_default_value"
    assert problem.rule == "a reader field the writer lacks must have a default"
    assert problem.message == (
        "field 'owner' was added without a default: readers of the new schema cannot fill it from records written "
        'with the previous schema; add "default": ""'
    )
    (optional,) = _messages(record(A_INT, f("owner", ["null", "string"])), record(A_INT), "BACKWARD")
    assert 'add "default": null' in optional


def test_a_rename_without_alias_suggests_the_alias() -> None:
    (message,) = _messages(record(f("description", "string")), record(f("notes", "string")), "BACKWARD")
    assert "field 'description' was added without a default" in message
    assert """if it renames 'notes', add "aliases": ["notes"]""" in message


def test_removed_field_without_default_is_explained_for_old_readers() -> None:
    (problem,) = check_compatibility(record(A_INT), [record(A_INT, f("owner", "string"))], "FORWARD").problems
    assert problem.direction == "old reads new"
    assert problem.message.startswith(
        "field 'owner' was removed, but the previous schema declares it without a default"
    )
    assert 'keep the field (mark it "deprecated")' in problem.message


def test_type_change_names_both_types_and_the_promotion_rule() -> None:
    (backward, forward) = check_compatibility(record(f("a", "string")), [record(A_INT)], "FULL").problems
    assert backward.message.startswith(
        "field 'a' changed type from int to string: readers of the new schema cannot read int as string"
    )
    assert forward.message.startswith(
        "field 'a' changed type from int to string: readers still on the previous schema cannot read string as int"
    )
    assert backward.rule == "types must match or promote (int→long→float→double, string↔bytes)"


def test_enum_changes_name_the_symbols() -> None:
    (removed,) = _messages(record(f("e", enum("A"))), record(f("e", enum("A", "B"))), "BACKWARD")
    assert removed.startswith("field 'e' (enum ref.E) no longer has symbol(s) B")
    (added,) = _messages(record(f("e", enum("A", "B"))), record(f("e", enum("A"))), "FORWARD")
    assert added.startswith("field 'e' (enum ref.E) gained symbol(s) B, and the previous schema's enum declares no")


def test_nested_paths_and_union_branches_are_named() -> None:
    nested = _messages(
        record(f("i", inner(f("x", "int"), f("y", "int")))), record(f("i", inner(f("x", "int")))), "BACKWARD"
    )
    assert nested == [
        (
            "field 'i.y' was added without a default: readers of the new schema cannot fill it from records "
            'written with the previous schema; add "default": 0'
        )
    ]
    items = _messages(
        record(f("xs", {"type": "array", "items": "string"})),
        record(f("xs", {"type": "array", "items": "int"})),
        "BACKWARD",
    )
    assert items[0].startswith("field 'xs[]' changed type from int to string")
    (lost,) = _messages(record(f("a", ["null", "string"])), record(f("a", ["null", "string", "int"])), "BACKWARD")
    assert lost.startswith("field 'a' no longer accepts int")
    (gained,) = _messages(record(f("a", ["null", "string"])), record(f("a", "string")), "FORWARD")
    assert gained.startswith(
        "field 'a' now accepts null, which readers still on the previous schema (string) cannot read"
    )


def test_payload_fields_inside_the_envelope_union_are_named() -> None:
    def envelope(payload: str) -> str:
        return record(f("payload", ["null", json.loads(payload)], default=None), name="TaskChange")

    old = envelope(record(f("title", "string", default=""), name="Task"))
    new = envelope(record(f("title", "string", default=""), f("owner", "string"), name="Task"))
    (problem,) = check_compatibility(new, [old], "BACKWARD").problems
    assert problem.location == "payload.owner"
    assert "field 'payload.owner' was added without a default" in problem.message


def test_record_renames_need_an_alias_and_relative_aliases_count() -> None:
    (message,) = _messages(record(A_INT, name="R2"), record(A_INT), "BACKWARD")
    assert (
        message
        == 'record ref.R was renamed to ref.R2: Avro matches named types by name; add "aliases": ["ref.R"] to ref.R2'
    )
    assert qualify_aliases(json.loads(record(A_INT, name="R2", aliases=["R", "other.X"])))["aliases"] == [
        "ref.R",
        "other.X",
    ]


def test_fixed_size_change_is_explained() -> None:
    (message, _) = _messages(
        record(f("h", {"type": "fixed", "name": "H", "size": 32})),
        record(f("h", {"type": "fixed", "name": "H", "size": 16})),
        "FULL",
    )
    assert message.startswith("field 'h' (fixed ref.H) changed size from 16 to 32 bytes")


def test_describe_gives_direction_version_message_and_rule() -> None:
    (problem,) = check_compatibility(record(A_INT, f("b", "int")), [record(A_INT), record(A_INT)], "BACKWARD").problems
    assert problem.other_version == 2
    assert problem.describe() == (
        f"new reads old (previous #2): {problem.message} (rule: a reader field the writer lacks must have a default)"
    )


@pytest.mark.parametrize(
    ("new", "match"),
    [
        ('{"type": "record", "name": "R", "fields": [', "the new schema is not valid JSON"),
        ('{"type": "record", "name": "R", "fields": [{"name": "a", "type": "integer"}]}', "not a valid Avro schema"),
        ('{"type": "enum", "name": "E", "symbols": ["A", "A"]}', "not a valid Avro schema"),
    ],
)
def test_unusable_input_is_a_configuration_error(new: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        check_compatibility(new, [record(A_INT)], "BACKWARD")


def test_unknown_level_and_unusable_previous_schema() -> None:
    with pytest.raises(ConfigurationError, match="unknown compatibility level SIDEWAYS"):
        check_compatibility(record(A_INT), [record(A_INT)], "sideways")
    with pytest.raises(ConfigurationError, match="previous schema #2 is not valid JSON"):
        check_compatibility(record(A_INT), [record(A_INT), "{"], "BACKWARD")


def test_the_first_version_and_level_none_are_always_compatible() -> None:
    assert check_compatibility(record(A_INT), [], "FULL_TRANSITIVE").is_compatible
    assert check_compatibility(record(f("a", "string")), [record(A_INT)], "none").is_compatible
