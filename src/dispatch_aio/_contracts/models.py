"""A pydantic model next to a payload's JSON Schema: where they disagree, and a schema from one.

The JSON Schema is the contract that crosses services; a model is one service's typed
view of it. :func:`compare_model_to_schema` lists where the two would part ways on real
payloads, each mismatch naming the field by its JSON path:

- **required**: a field the schema requires that the model lacks (publishing the model
  fails), or one the model requires that the schema leaves optional or does not list
  (parsing a valid event fails);
- **field**: a model field the schema does not list while it refuses unknown fields;
- **type**: JSON types that differ, ``null`` included (an ``Optional`` field whose schema
  does not allow null publishes a payload the schema refuses);
- **enum**: allowed values that differ.

Nested objects and array items are compared too. :func:`payload_schema_from_model`
writes a schema the registry accepts (definitions under ``definitions``, unknown fields
refused).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel

__all__ = [
    "PAYLOAD_MODELS_NAME",
    "Mismatch",
    "compare_model_to_schema",
    "payload_models_in",
    "payload_schema_from_model",
]

#: A module may list its payload models explicitly: ``PAYLOAD_MODELS = {"order.placed": Model}``.
PAYLOAD_MODELS_NAME: Final = "PAYLOAD_MODELS"

MismatchKind = Literal["required", "field", "type", "enum"]
_SCHEMA_URI: Final = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One place where a model and a payload schema disagree.

    ``path`` is the field's JSON path (``$.payload.items[].sku``); ``model`` and
    ``schema`` say what each side allows there.
    """

    path: str
    kind: MismatchKind
    model: str
    schema: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: the model says {self.model}, the schema {self.schema}"


def payload_schema_from_model(
    model: type[BaseModel], *, title: str | None = None
) -> dict[str, Any]:
    """A payload schema for ``model`` in the registry's dialect. No I/O.

    Pydantic's ``$defs`` become ``definitions`` (referenced as ``#/definitions/...``),
    every object refuses unknown fields, and ``$schema`` is JSON Schema 2020-12.
    """
    generated = model.model_json_schema(by_alias=True, ref_template="#/definitions/{model}")
    schema: dict[str, Any] = {"$schema": _SCHEMA_URI}
    if title is not None:
        generated["title"] = title
    definitions = generated.pop("$defs", None)
    schema.update(generated)
    if definitions:
        schema["definitions"] = definitions
    _close_objects(schema)
    return schema


def payload_models_in(namespace: object, event_types: Iterable[str]) -> dict[str, type[BaseModel]]:
    """The payload models a module (or any object) declares, by event type. No I/O.

    Explicitly, a mapping named ``PAYLOAD_MODELS`` (``{"order.placed": OrderPlaced}``);
    otherwise by name, for each of ``event_types``: a pydantic model whose class name is
    the event type in CamelCase (``order.placed`` -> ``OrderPlaced``, ``credit_note.issued``
    -> ``CreditNoteIssued``). What ``dispatch-aio contracts check --models MODULE`` checks.
    """
    explicit = getattr(namespace, PAYLOAD_MODELS_NAME, None)
    if isinstance(explicit, Mapping):
        return {
            str(event_type): model
            for event_type, model in explicit.items()
            if isinstance(model, type) and issubclass(model, BaseModel)
        }
    found: dict[str, type[BaseModel]] = {}
    for event_type in event_types:
        name = "".join(part.capitalize() for part in event_type.replace(".", "_").split("_"))
        candidate = getattr(namespace, name, None)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            found[event_type] = candidate
    return found


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


def compare_model_to_schema(
    model: type[BaseModel], schema: dict[str, Any], *, root: str = "$.payload"
) -> list[Mismatch]:
    """Where ``model`` and the payload ``schema`` disagree; an empty list when they agree.

    No I/O. Paths start at ``root``.
    """
    generated = model.model_json_schema(by_alias=True, ref_template="#/definitions/{model}")
    generated["definitions"] = generated.pop("$defs", {})
    found: list[Mismatch] = []
    _Walk(generated, copy.deepcopy(schema), found).compare(generated, schema, root, 0)
    return found


class _Walk:
    def __init__(
        self, model_root: dict[str, Any], schema_root: dict[str, Any], found: list[Mismatch]
    ) -> None:
        self.model_root = model_root
        self.schema_root = schema_root
        self.found = found

    def compare(self, model: Any, schema: Any, path: str, depth: int) -> None:
        if depth > 32:
            return  # recursive models: deep enough to have said everything
        model = _resolve(model, self.model_root)
        schema = _resolve(schema, self.schema_root)
        if not isinstance(model, dict) or not isinstance(schema, dict):
            return
        model_types, schema_types = _types(model, self.model_root), _types(schema, self.schema_root)
        if model_types is not None and schema_types is not None and model_types != schema_types:
            self._add(path, "type", _show(model_types), _show(schema_types))
        model_enum, schema_enum = _enum(model, self.model_root), _enum(schema, self.schema_root)
        if model_enum != schema_enum and (model_enum is not None or schema_enum is not None):
            self._add(path, "enum", _show_enum(model_enum), _show_enum(schema_enum))
        model_obj = _branch(model, self.model_root, "object")
        schema_obj = _branch(schema, self.schema_root, "object")
        if model_obj is not None and schema_obj is not None:
            self._objects(model_obj, schema_obj, path, depth)
        model_arr = _branch(model, self.model_root, "array")
        schema_arr = _branch(schema, self.schema_root, "array")
        if model_arr is not None and schema_arr is not None:
            items_m, items_s = model_arr.get("items"), schema_arr.get("items")
            if isinstance(items_m, dict) and isinstance(items_s, dict):
                self.compare(items_m, items_s, f"{path}[]", depth + 1)

    def _objects(
        self, model: dict[str, Any], schema: dict[str, Any], path: str, depth: int
    ) -> None:
        model_props: dict[str, Any] = model.get("properties", {})
        schema_props: dict[str, Any] = schema.get("properties", {})
        if "properties" not in model:
            return  # a free-form dict in the model: it takes whatever the schema allows
        model_required = set(model.get("required", ()))
        schema_required = set(schema.get("required", ()))
        closed = schema.get("additionalProperties") is False
        # Schema order first, then the model's own fields: a stable report.
        for name in dict.fromkeys([*schema_props, *model_props, *sorted(schema_required)]):
            at = f"{path}.{name}"
            in_model, in_schema = name in model_props, name in schema_props
            if not in_model:
                if name in schema_required:
                    self._add(at, "required", "no such field", "required")
                continue
            if not in_schema and name not in schema_required:
                if closed:
                    self._add(at, "field", "a field", "no such field (unknown fields refused)")
                elif name in model_required:
                    self._add(at, "required", "required", "no such field")
                continue
            if name in model_required and name not in schema_required:
                self._add(at, "required", "required", "optional")
            elif name in schema_required and name not in model_required:
                self._add(at, "required", "optional (has a default)", "required")
            if in_schema:
                self.compare(model_props[name], schema_props[name], at, depth + 1)

    def _add(self, path: str, kind: MismatchKind, model: str, schema: str) -> None:
        self.found.append(Mismatch(path, kind, model, schema))


# --------------------------------------------------------------------------- schema reading


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """Follow local ``$ref``s and single-element ``allOf`` wrappers."""
    for _ in range(64):
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            if target is None:
                return node
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            continue
        all_of = node.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1:
            rest = {k: v for k, v in node.items() if k != "allOf"}
            node = {**_resolve(all_of[0], root), **rest}
            continue
        return node
    return node


def _alternatives(node: dict[str, Any]) -> list[Any] | None:
    for keyword in ("anyOf", "oneOf"):
        value = node.get(keyword)
        if isinstance(value, list) and value:
            return value
    return None


def _types(node: Any, root: dict[str, Any]) -> frozenset[str] | None:
    """The JSON types ``node`` admits, or None when it does not restrict them."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return frozenset({_json_type(node["const"])})
    if isinstance(node.get("enum"), list):
        return frozenset(_json_type(v) for v in node["enum"])
    declared = node.get("type")
    if isinstance(declared, str):
        return frozenset({declared})
    if isinstance(declared, list):
        return frozenset(t for t in declared if isinstance(t, str))
    alternatives = _alternatives(node)
    if alternatives is not None:
        union: set[str] = set()
        for alternative in alternatives:
            types = _types(alternative, root)
            if types is None:
                return None
            union |= types
        return frozenset(union)
    return None


def _enum(node: Any, root: dict[str, Any]) -> frozenset[Any] | None:
    """The values ``node`` allows (null aside), or None when it lists none."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return frozenset({_hashable(node["const"])})
    if isinstance(node.get("enum"), list):
        return frozenset(_hashable(v) for v in node["enum"] if v is not None)
    alternatives = _alternatives(node)
    if alternatives is None:
        return None
    values: set[Any] = set()
    for alternative in alternatives:
        resolved = _resolve(alternative, root)
        if isinstance(resolved, dict) and resolved.get("type") == "null":
            continue
        found = _enum(resolved, root)
        if found is None:
            return None
        values |= found
    return frozenset(values)


def _branch(node: dict[str, Any], root: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The part of ``node`` (itself or one alternative) that describes an ``kind``."""
    if node.get("type") == kind or (kind == "object" and "properties" in node):
        return node
    for alternative in _alternatives(node) or ():
        resolved = _resolve(alternative, root)
        if isinstance(resolved, dict) and (
            resolved.get("type") == kind or (kind == "object" and "properties" in resolved)
        ):
            return resolved
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _show(types: frozenset[str]) -> str:
    return " or ".join(sorted(types))


def _show_enum(values: frozenset[Any] | None) -> str:
    if values is None:
        return "any value"
    return "one of " + ", ".join(sorted(repr(v) for v in values))
