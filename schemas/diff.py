"""Field-level, human-readable differences between two versions of an Avro record schema.

Works on the schema documents (JSON), so it shows what a developer wrote — aliases, defaults, deprecation
marks, enum defaults — and not only what matters to resolution; `keel schemas diff` prints it beside the
compatibility verdict of the pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from keel.errors import ConfigurationError

__all__ = ["SchemaChange", "diff_schemas", "render_type"]

_NAMED = ("record", "error", "enum", "fixed")
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
# Writer type → reader types that read it (Avro specification, "Schema Resolution").
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_SIGNS = {
    "added": "+",
    "removed": "-",
    "deprecated": "!",
}


@dataclass(frozen=True)
class SchemaChange:
    """One difference: its kind (added, removed, renamed, type-changed, ...), the field path and details."""

    kind: str
    path: str
    detail: str

    def describe(self) -> str:
        """One line, `+`/`-`/`~`/`!` first: `+ payload.labels  added: array<string>, default []`."""
        return f"{_SIGNS.get(self.kind, '~')} {self.path or '(top level)'}  {self.kind}: {self.detail}"


def _load(schema: str | dict[str, Any], what: str) -> Any:
    if isinstance(schema, dict):
        return schema
    try:
        return json.loads(schema)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{what} is not valid JSON: {error.msg} at line {error.lineno}") from error


class _Names:
    """Named types of one document by full name and simple name, so references like "Hlc" resolve."""

    def __init__(self, document: Any) -> None:
        self.types: dict[str, dict[str, Any]] = {}
        self._collect(document, "")

    def _collect(self, node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                self._collect(branch, namespace)
            return
        if not isinstance(node, dict):
            return
        if node.get("type") in _NAMED and isinstance(node.get("name"), str):
            name = node["name"]
            namespace = name.rpartition(".")[0] if "." in name else str(node.get("namespace", namespace) or "")
            full = name if "." in name else f"{namespace}.{name}".strip(".")
            self.types[full] = node
            self.types.setdefault(name.rpartition(".")[2], node)
            for spec in node.get("fields", []):
                if isinstance(spec, dict):
                    self._collect(spec.get("type"), namespace)
            return
        for key in ("items", "values", "type"):
            if isinstance(node.get(key), dict | list):
                self._collect(node[key], namespace)

    def resolve(self, node: Any) -> Any:
        """The definition behind a name reference; anything else as it is."""
        if isinstance(node, str) and node not in _PRIMITIVES:
            return self.types.get(node, self.types.get(node.rpartition(".")[2], node))
        if isinstance(node, dict) and node.get("type") in _PRIMITIVES and len(node) == 1:
            return node["type"]
        return node


def render_type(node: Any) -> str:
    """A short human form of a type document: `string`, `long(timestamp-millis)`, `array<string>`, `null | Task`."""
    if isinstance(node, list):
        return " | ".join(render_type(branch) for branch in node)
    if not isinstance(node, dict):
        return node if isinstance(node, str) else repr(node)
    kind = node.get("type")
    if kind in _NAMED:
        return f"{node.get('name')}"
    if kind in ("array", "map"):
        inner = node.get("items") if kind == "array" else node.get("values")
        return f"{kind}<{render_type(inner)}>"
    logical = node.get("logicalType")
    return f"{render_type(kind)}({logical})" if logical else render_type(kind)


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, dict):
        return str(node.get("type"))
    return str(node)


def _simple_name(node: Any) -> str:
    return str(node.get("name", "")).rpartition(".")[2] if isinstance(node, dict) else ""


def _is_promotion(old: Any, new: Any) -> bool:
    return isinstance(old, str) and isinstance(new, str) and new in _PROMOTIONS.get(old, set())


class _Differ:
    def __init__(self, old: Any, new: Any) -> None:
        self.old_names, self.new_names = _Names(old), _Names(new)
        self.changes: list[SchemaChange] = []
        self._seen: set[tuple[int, int]] = set()

    def add(self, kind: str, path: str, detail: str) -> None:
        self.changes.append(SchemaChange(kind, path, detail))

    def types(self, old: Any, new: Any, path: str) -> None:
        old, new = self.old_names.resolve(old), self.new_names.resolve(new)
        old_kind, new_kind = _kind(old), _kind(new)
        if old_kind == new_kind == "union":
            self.unions(old, new, path)
        elif old_kind == new_kind and old_kind in _NAMED:
            self.named(old, new, path)
        elif old_kind == new_kind == "array":
            self.types(old.get("items"), new.get("items"), f"{path}[]")
        elif old_kind == new_kind == "map":
            self.types(old.get("values"), new.get("values"), f"{path}{{}}")
        elif render_type(old) != render_type(new):
            old_base = old if isinstance(old, str) else old.get("type") if isinstance(old, dict) else None
            new_base = new if isinstance(new, str) else new.get("type") if isinstance(new, dict) else None
            note = " (Avro promotes it)" if _is_promotion(old_base, new_base) else ""
            self.add("type-changed", path, f"{render_type(old)} → {render_type(new)}{note}")

    def unions(self, old: list[Any], new: list[Any], path: str) -> None:
        old_branches = [self.old_names.resolve(b) for b in old]
        new_branches = [self.new_names.resolve(b) for b in new]

        def key(branch: Any) -> str:
            return f"{_kind(branch)}:{_simple_name(branch)}" if _kind(branch) in _NAMED else render_type(branch)

        old_keys, new_keys = [key(b) for b in old_branches], [key(b) for b in new_branches]
        added = [render_type(b) for b, k in zip(new_branches, new_keys, strict=True) if k not in old_keys]
        removed = [render_type(b) for b, k in zip(old_branches, old_keys, strict=True) if k not in new_keys]
        if added:
            self.add("union-branches-added", path, ", ".join(added))
        if removed:
            self.add("union-branches-removed", path, ", ".join(removed))
        for old_branch, old_key in zip(old_branches, old_keys, strict=True):
            if old_key in new_keys:
                self.types(old_branch, new_branches[new_keys.index(old_key)], path)

    def named(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        if (id(old), id(new)) in self._seen:  # recursive types: compare each pair once
            return
        self._seen.add((id(old), id(new)))
        if _simple_name(old) != _simple_name(new):
            aliases = [str(a).rpartition(".")[2] for a in new.get("aliases", [])]
            how = " (alias)" if _simple_name(old) in aliases else " (no alias: readers will not match it)"
            self.add("type-renamed", path, f"{old.get('name')} → {new.get('name')}{how}")
        kind = _kind(new)
        if kind in ("record", "error"):
            self.records(old, new, path)
        elif kind == "enum":
            self.enums(old, new, path)
        elif old.get("size") != new.get("size"):
            self.add("type-changed", path, f"fixed size {old.get('size')} → {new.get('size')}")

    def enums(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_symbols, new_symbols = list(old.get("symbols", [])), list(new.get("symbols", []))
        added = [s for s in new_symbols if s not in old_symbols]
        removed = [s for s in old_symbols if s not in new_symbols]
        name = new.get("name")
        if added:
            self.add("enum-symbols-added", path, f"{name}: {', '.join(added)}")
        if removed:
            self.add("enum-symbols-removed", path, f"{name}: {', '.join(removed)}")
        if old.get("default") != new.get("default"):
            self.add("enum-default-changed", path, f"{name}: {old.get('default')} → {new.get('default')}")

    def records(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_fields = {f["name"]: f for f in old.get("fields", [])}
        matched: set[str] = set()
        for spec in new.get("fields", []):
            name = spec["name"]
            field_path = f"{path}.{name}" if path else name
            previous = old_fields.get(name)
            if previous is None:
                previous = next((old_fields[a] for a in spec.get("aliases", []) if a in old_fields), None)
                if previous is not None:
                    self.add("renamed", field_path, f"from '{previous['name']}' (alias)")
            if previous is None:
                default = f", default {json.dumps(spec['default'])}" if "default" in spec else ", NO default"
                self.add("added", field_path, f"{render_type(spec['type'])}{default}")
                continue
            matched.add(previous["name"])
            self.field(previous, spec, field_path)
        for name, spec in old_fields.items():
            if name not in matched:
                field_path = f"{path}.{name}" if path else name
                default = f", had default {json.dumps(spec['default'])}" if "default" in spec else ", had NO default"
                self.add("removed", field_path, f"{render_type(spec['type'])}{default}")

    def field(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        if "deprecated" in new and "deprecated" not in old:
            self.add("deprecated", path, f"{new['deprecated']}")
        elif "deprecated" in old and "deprecated" not in new:
            self.add("undeprecated", path, "no longer marked deprecated")
        if ("default" in old) != ("default" in new):
            what = f"added: {json.dumps(new['default'])}" if "default" in new else "removed"
            self.add("default-changed", path, f"default {what}")
        elif "default" in old and old["default"] != new["default"]:
            self.add("default-changed", path, f"{json.dumps(old['default'])} → {json.dumps(new['default'])}")
        self.types(old["type"], new["type"], path)


def diff_schemas(old: str | dict[str, Any], new: str | dict[str, Any]) -> list[SchemaChange]:
    """Every field-level difference from `old` to `new` (schema JSON text or documents)."""
    old_doc, new_doc = _load(old, "the old schema"), _load(new, "the new schema")
    differ = _Differ(old_doc, new_doc)
    differ.types(old_doc, new_doc, "")
    return differ.changes
