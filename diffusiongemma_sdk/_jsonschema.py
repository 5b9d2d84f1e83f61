"""A small JSON Schema check, for structured output asked for as a schema dict rather than a pydantic model.

It covers what tool and response schemas use: `type` (one or several), `enum`, `const`, `properties`, `required`,
`additionalProperties`, `items`, `minItems`/`maxItems`, `minimum`/`maximum`, `minLength`/`maxLength`, `anyOf`/`oneOf`/
`allOf` and local `$ref`s (`#/$defs/...`, `#/definitions/...`). Other keywords are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SchemaMismatch", "check_json"]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class SchemaMismatch(ValueError):
    """A JSON value does not match a schema; the message says where and why."""


def check_json(value: Any, schema: Mapping[str, Any]) -> None:
    """Raise `SchemaMismatch` when `value` does not match `schema`."""
    _check(value, schema, {**schema.get("definitions", {}), **schema.get("$defs", {})}, "$")


def _check(value: Any, schema: Mapping[str, Any], definitions: Mapping[str, Any], path: str) -> None:
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        if name not in definitions:
            raise SchemaMismatch(f"{path}: the schema refers to {schema['$ref']!r}, which it does not define")
        _check(value, definitions[name], definitions, path)
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(_matches(value, sub, definitions, path) for sub in schema[key]):
            raise SchemaMismatch(f"{path}: matches none of the allowed shapes")
    for sub in schema.get("allOf", []):
        _check(value, sub, definitions, path)
    if "const" in schema and value != schema["const"]:
        raise SchemaMismatch(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaMismatch(f"{path}: must be one of {schema['enum']!r}")
    if "type" in schema:
        _check_type(value, schema["type"], path)
    if isinstance(value, dict):
        _check_object(value, schema, definitions, path)
    elif isinstance(value, list):
        _check_array(value, schema, definitions, path)
    elif isinstance(value, str):
        _check_bounds(len(value), schema, "minLength", "maxLength", path, "its length")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_bounds(value, schema, "minimum", "maximum", path, "it")


def _matches(value: Any, schema: Mapping[str, Any], definitions: Mapping[str, Any], path: str) -> bool:
    try:
        _check(value, schema, definitions, path)
    except SchemaMismatch:
        return False
    return True


def _check_type(value: Any, expected: str | list[str], path: str) -> None:
    names = [expected] if isinstance(expected, str) else list(expected)
    for name in names:
        kinds = _TYPES.get(name, (object,))
        if isinstance(value, kinds) and not (isinstance(value, bool) and name in ("integer", "number")):
            return
        if name == "integer" and isinstance(value, float) and value.is_integer():
            return
    raise SchemaMismatch(f"{path}: must be of type {' or '.join(names)}, not {type(value).__name__}")


def _check_object(value: dict[str, Any], schema: Mapping[str, Any], definitions: Mapping[str, Any], path: str) -> None:
    properties: Mapping[str, Any] = schema.get("properties", {})
    missing = [name for name in schema.get("required", []) if name not in value]
    if missing:
        raise SchemaMismatch(f"{path}: missing required field(s) {', '.join(missing)}")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check(item, properties[name], definitions, f"{path}.{name}")
        elif extra is False:
            raise SchemaMismatch(f"{path}: unexpected field {name!r}")
        elif isinstance(extra, Mapping):
            _check(item, extra, definitions, f"{path}.{name}")


def _check_array(value: list[Any], schema: Mapping[str, Any], definitions: Mapping[str, Any], path: str) -> None:
    _check_bounds(len(value), schema, "minItems", "maxItems", path, "its number of items")
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            _check(item, items, definitions, f"{path}[{index}]")


def _check_bounds(size: float, schema: Mapping[str, Any], low: str, high: str, path: str, what: str) -> None:
    if low in schema and size < schema[low]:
        raise SchemaMismatch(f"{path}: {what} must be at least {schema[low]}")
    if high in schema and size > schema[high]:
        raise SchemaMismatch(f"{path}: {what} must be at most {schema[high]}")
