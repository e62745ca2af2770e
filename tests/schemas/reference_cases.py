"""Schema-evolution reference cases from the Avro specification's resolution rules, with their verdicts.

Each pair case gives the verdict of "new reads old" (BACKWARD) and "old reads new" (FORWARD); a level's
verdict follows from Confluent's definitions. Chain cases are where transitive and non-transitive levels
disagree, so their verdicts are given per level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

LEVELS = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE")


def record(*fields: dict[str, Any], name: str = "R", **extra: Any) -> str:
    """A record schema in namespace `ref`."""
    return json.dumps({"type": "record", "name": name, "namespace": "ref", "fields": list(fields), **extra})


def f(name: str, kind: Any, **extra: Any) -> dict[str, Any]:
    """A field."""
    return {"name": name, "type": kind, **extra}


def enum(*symbols: str, **extra: Any) -> dict[str, Any]:
    """An enum type named E."""
    return {"type": "enum", "name": "E", "symbols": list(symbols), **extra}


def inner(*fields: dict[str, Any]) -> dict[str, Any]:
    """A nested record type named I."""
    return {"type": "record", "name": "I", "fields": list(fields)}


@dataclass(frozen=True)
class PairCase:
    """One change from `old` to `new` and whether each direction can read the other."""

    name: str
    old: str
    new: str
    backward: bool  # the new schema reads data written with the old one
    forward: bool  # the old schema reads data written with the new one

    def expected(self, level: str) -> bool:
        """Confluent's verdict at `level` (with one previous version, transitive equals non-transitive)."""
        base = level.removesuffix("_TRANSITIVE")
        return {
            "BACKWARD": self.backward,
            "FORWARD": self.forward,
            "FULL": self.backward and self.forward,
            "NONE": True,
        }[base]


A_INT = f("a", "int")
PAIR_CASES = [
    PairCase("added field with default", record(A_INT), record(A_INT, f("b", "string", default="")), True, True),
    PairCase("added field without default", record(A_INT), record(A_INT, f("b", "string")), False, True),
    PairCase("removed field with default", record(A_INT, f("b", "string", default="")), record(A_INT), True, True),
    PairCase("removed field without default", record(A_INT, f("b", "string")), record(A_INT), True, False),
    PairCase("int promoted to long", record(A_INT), record(f("a", "long")), True, False),
    PairCase("long promoted to float", record(f("a", "long")), record(f("a", "float")), True, False),
    PairCase("float promoted to double", record(f("a", "float")), record(f("a", "double")), True, False),
    PairCase("int promoted to double", record(A_INT), record(f("a", "double")), True, False),
    PairCase("long narrowed to int", record(f("a", "long")), record(A_INT), False, True),
    PairCase("string to bytes", record(f("a", "string")), record(f("a", "bytes")), True, True),
    PairCase("bytes to string", record(f("a", "bytes")), record(f("a", "string")), True, True),
    PairCase("int to string", record(A_INT), record(f("a", "string")), False, False),
    PairCase(
        "enum symbol added, no default",
        record(f("e", enum("A", "B"))),
        record(f("e", enum("A", "B", "C"))),
        True,
        False,
    ),
    PairCase(
        "enum symbol added, enum default",
        record(f("e", enum("A", "B", default="A"))),
        record(f("e", enum("A", "B", "C", default="A"))),
        True,
        True,
    ),
    PairCase(
        "enum symbol removed, no default",
        record(f("e", enum("A", "B", "C"))),
        record(f("e", enum("A", "B"))),
        False,
        True,
    ),
    PairCase(
        "enum symbol removed, enum default",
        record(f("e", enum("A", "B", "C"))),
        record(f("e", enum("A", "B", default="A"))),
        True,
        True,
    ),
    PairCase(
        "union branch added", record(f("a", ["null", "string"])), record(f("a", ["null", "string", "int"])), True, False
    ),
    PairCase(
        "union branch removed",
        record(f("a", ["null", "string", "int"])),
        record(f("a", ["null", "string"])),
        False,
        True,
    ),
    PairCase("type widened to a union", record(f("a", "string")), record(f("a", ["null", "string"])), True, False),
    PairCase("union narrowed to a type", record(f("a", ["null", "string"])), record(f("a", "string")), False, True),
    PairCase("record renamed with an alias", record(A_INT), record(A_INT, name="R2", aliases=["R"]), True, False),
    PairCase(
        "record renamed with a full alias", record(A_INT), record(A_INT, name="R2", aliases=["ref.R"]), True, False
    ),
    PairCase("record renamed without alias", record(A_INT), record(A_INT, name="R2"), False, False),
    PairCase("field renamed with an alias", record(A_INT), record(f("b", "int", aliases=["a"])), True, False),
    PairCase(
        "field renamed with an alias, old default",
        record(f("a", "int", default=0)),
        record(f("b", "int", aliases=["a"])),
        True,
        True,
    ),
    PairCase(
        "nested record gains a field without default",
        record(f("i", inner(f("x", "int")))),
        record(f("i", inner(f("x", "int"), f("y", "int")))),
        False,
        True,
    ),
    PairCase(
        "nested record field promoted",
        record(f("i", inner(f("x", "int")))),
        record(f("i", inner(f("x", "long")))),
        True,
        False,
    ),
    PairCase(
        "array items promoted",
        record(f("xs", {"type": "array", "items": "int"})),
        record(f("xs", {"type": "array", "items": "long"})),
        True,
        False,
    ),
    PairCase(
        "array of records gains a defaulted field",
        record(f("xs", {"type": "array", "items": inner(f("x", "int"))})),
        record(f("xs", {"type": "array", "items": inner(f("x", "int"), f("y", "int", default=0))})),
        True,
        True,
    ),
    PairCase(
        "map values change type",
        record(f("m", {"type": "map", "values": "string"})),
        record(f("m", {"type": "map", "values": "int"})),
        False,
        False,
    ),
    PairCase(
        "fixed size changed",
        record(f("h", {"type": "fixed", "name": "H", "size": 16})),
        record(f("h", {"type": "fixed", "name": "H", "size": 32})),
        False,
        False,
    ),
]


@dataclass(frozen=True)
class ChainCase:
    """A new version after several previous ones (oldest first), with the verdict at every level."""

    name: str
    previous: tuple[str, ...]
    new: str
    verdicts: dict[str, bool]


CHAIN_CASES = [
    ChainCase(
        # a string field is dropped (with its default), then comes back as an int: fine against the last
        # version, a type change against the first.
        "field removed then re-added with another type",
        (record(f("a", "string", default="")), record()),
        record(f("a", "int", default=0)),
        {
            "BACKWARD": True,
            "BACKWARD_TRANSITIVE": False,
            "FORWARD": True,
            "FORWARD_TRANSITIVE": False,
            "FULL": True,
            "FULL_TRANSITIVE": False,
            "NONE": True,
        },
    ),
    ChainCase(
        # v2 gave the enum a default, so v2 readers tolerate new symbols; v1 readers never will.
        "enum grows after a default was added",
        (record(f("e", enum("A", "B"))), record(f("e", enum("A", "B", default="A")))),
        record(f("e", enum("A", "B", "C", default="A"))),
        {
            "BACKWARD": True,
            "BACKWARD_TRANSITIVE": True,
            "FORWARD": True,
            "FORWARD_TRANSITIVE": False,
            "FULL": True,
            "FULL_TRANSITIVE": False,
            "NONE": True,
        },
    ),
    ChainCase(
        # v2 dropped symbol C behind an enum default; v3 drops the default too: v3 reads v2's data, but
        # v1 records holding C have no symbol to land on.
        "enum default dropped after a symbol was removed",
        (record(f("e", enum("A", "B", "C"))), record(f("e", enum("A", "B", default="A")))),
        record(f("e", enum("A", "B"))),
        {
            "BACKWARD": True,
            "BACKWARD_TRANSITIVE": False,
            "FORWARD": True,
            "FORWARD_TRANSITIVE": True,
            "FULL": True,
            "FULL_TRANSITIVE": False,
            "NONE": True,
        },
    ),
]
