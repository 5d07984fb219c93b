"""JSON Schemas of the MQTT payloads, generated from the payload models in `messages`.

The models are the single source of the wire format; the files in ``edge_asd/schemas/`` are
generated artefacts, committed so that integrators and the docs have them, and a test fails
when one is stale::

    python -m edge_asd.mqtt.schemas --write   # regenerate edge_asd/schemas/*.json
    python -m edge_asd.mqtt.schemas --check   # exit status 1 if a committed file differs

Nothing here runs at import of `messages`: the daemon never needs a schema.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Mapping, Sequence
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from edge_asd.mqtt.messages import (
    PAYLOAD_MODELS,
    SCHEMA_ENVIRONMENT,
    SCHEMA_EVENT,
    SCHEMA_SCORE,
    SCHEMA_STATS,
    null_when_not_finite_fields,
)

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR: Final = Path(__file__).resolve().parent.parent / "schemas"
"""``edge_asd/schemas/`` of this checkout (package data, listed in pyproject.toml)."""
SCHEMA_FILES: Final[Mapping[str, str]] = {
    SCHEMA_EVENT: "event.schema.json",
    SCHEMA_SCORE: "score.schema.json",
    SCHEMA_STATS: "stats.schema.json",
    SCHEMA_ENVIRONMENT: "environment.schema.json",
}

# Root keywords first, in reading order; the rest sorted, as the files have always been.
_ROOT_ORDER: Final = (
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "required",
    "additionalProperties",
    "properties",
)
# Annotations msgspec adds that say nothing to a consumer: titles derived from Python names,
# and defaults (every field is always written, so a default never applies on the wire).
_DROPPED_KEYWORDS: Final = frozenset({"title", "default"})


def schema_uri(schema_id: str) -> str:
    """``$id`` of a payload schema: ``edge-asd.event/1`` -> ``urn:edge-asd:schema:event:1``."""
    name, _, major = schema_id.removeprefix("edge-asd.").partition("/")
    return f"urn:edge-asd:schema:{name}:{major}"


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """Resolve ``$ref`` into ``$defs`` and tidy each subschema.

    Inlined, each file reads on its own (the models are small and not recursive).
    """
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        # A definition's description is its Python docstring; the field's own says it for
        # the wire.
        target = {
            key: value
            for key, value in defs[node["$ref"].removeprefix("#/$defs/")].items()
            if key != "description"
        }
        # Keywords next to the $ref (the field's description) win over the definition's.
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
    tidy: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key == "properties":
            # Keys of `properties` are field names, not keywords: never drop one.
            tidy[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        else:
            tidy[key] = _inline(value, defs)
    patterns = tidy.get("patternProperties")
    if isinstance(patterns, dict) and len(patterns) == 1 and "additionalProperties" not in tidy:
        # A constrained dict key as patternProperties would let keys that do not match through
        # unchecked; propertyNames rejects them. (msgspec writes propertyNames already.)
        ((pattern, value_schema),) = patterns.items()
        del tidy["patternProperties"]
        tidy["propertyNames"] = {**tidy.get("propertyNames", {}), "pattern": pattern}
        tidy["additionalProperties"] = value_schema
    branches = tidy.get("anyOf")
    if isinstance(branches, list) and all(set(b) == {"type"} for b in branches):
        # anyOf [{number}, {null}] (a nullable float) reads better as type [number, null].
        del tidy["anyOf"]
        tidy["type"] = [branch["type"] for branch in branches]
    enum = tidy.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(item, str) for item in enum):
        # msgspec writes an enum or a Literal as a bare `enum`; the type says it is text, and
        # a single value (the `schema` field) reads better as const.
        tidy["type"] = "string"
        if len(enum) == 1:
            del tidy["enum"]
            tidy["const"] = enum[0]
    # Sorted keywords, also where a $ref was merged in.
    return dict(sorted(tidy.items()))


def _check_strict(node: Any, where: str) -> None:
    """Every object schema with properties is closed, requires and describes all of them.

    Guards the generator's promise (no unknown field passes, no field may be left out) against
    a model change such as a forgotten ``extra="forbid"``.
    """
    if isinstance(node, list):
        for index, item in enumerate(node):
            _check_strict(item, f"{where}/{index}")
        return
    if not isinstance(node, dict):
        return
    properties = node.get("properties")
    if isinstance(properties, dict):
        if node.get("additionalProperties") is not False:
            raise AssertionError(f"{where}: additionalProperties is not false")
        if node.get("required") != list(properties):
            raise AssertionError(f"{where}: required {node.get('required')} != {list(properties)}")
        for name, sub in properties.items():
            if not sub.get("description"):
                # Also catches a field whose description was left to the docstring of the
                # referenced type, which the inlining drops.
                raise AssertionError(f"{where}/properties/{name}: no description")
            _check_strict(sub, f"{where}/properties/{name}")
    for key, value in node.items():
        if key != "properties":
            _check_strict(value, f"{where}/{key}")


def _named_types(model: type[msgspec.Struct]) -> dict[str, type]:
    """`model` and every Struct and Enum its fields refer to, by their $defs names."""
    found: dict[str, type] = {}
    todo: list[Any] = [model]
    while todo:
        kind = todo.pop()
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct | Enum):
            if kind.__name__ not in found:
                found[kind.__name__] = kind
                if issubclass(kind, msgspec.Struct):
                    todo.extend(f.type for f in msgspec.structs.fields(kind))
        else:
            # Annotated[X, ...], X | None, list[X], dict[K, X]
            todo.extend(typing.get_args(kind))
            if typing.get_origin(kind) is Annotated:
                todo.append(kind.__origin__)
    return found


def _describe_the_wire(model: type[msgspec.Struct], defs: dict[str, Any]) -> None:
    """Make msgspec's schemas (of the Python values) describe what `to_dict()` writes:
    `WireFloat` fields are null when not finite, and every field is required, since every
    field is always written (`schema` has a default only for the constructor). Enum values
    stay in their definition order (msgspec sorts them), which reads as a lifecycle."""
    for name, kind in _named_types(model).items():
        schema = defs[name]
        if issubclass(kind, Enum):
            schema["enum"] = [member.value for member in kind]
            continue
        assert issubclass(kind, msgspec.Struct)
        for wire_name in null_when_not_finite_fields(kind):
            schema["properties"][wire_name]["type"] = ["number", "null"]
        schema["required"] = list(schema["properties"])


def generate(schema_id: str) -> dict[str, Any]:
    """The JSON Schema of payload `schema_id`, generated from its model."""
    if schema_id not in PAYLOAD_MODELS:
        raise ValueError(f"unknown payload schema {schema_id!r}; known: {sorted(PAYLOAD_MODELS)}")
    model = PAYLOAD_MODELS[schema_id]
    (ref,), defs = msgspec.json.schema_components([model], ref_template="#/$defs/{name}")
    _describe_the_wire(model, defs)
    raw = defs[ref["$ref"].removeprefix("#/$defs/")]
    body = _inline(raw, defs)
    body["$schema"] = DIALECT
    body["$id"] = schema_uri(schema_id)
    body["title"] = model.TITLE
    # The model docstring is the description; joined, as it is wrapped for the source.
    body["description"] = " ".join(str(raw.get("description", "")).split())
    ordered = {key: body.pop(key) for key in _ROOT_ORDER if key in body}
    ordered.update(body)
    _check_strict(ordered, schema_id)
    return ordered


def render(schema_id: str) -> str:
    """The committed text of a schema file: 2-space indent, ASCII, trailing newline."""
    return json.dumps(generate(schema_id), indent=2, ensure_ascii=True) + "\n"


@cache
def _rendered(schema_id: str) -> str:
    return render(schema_id)


def payload_schema(schema_id: str) -> dict[str, Any]:
    """A fresh copy of the generated schema (cached as text, so callers may mutate it)."""
    if schema_id not in SCHEMA_FILES:
        raise ValueError(f"unknown payload schema {schema_id!r}; known: {sorted(SCHEMA_FILES)}")
    loaded: dict[str, Any] = json.loads(_rendered(schema_id))
    return loaded


def stale_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Schema files in `directory` that are missing or differ from the generated text."""
    stale = []
    for schema_id, name in SCHEMA_FILES.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != _rendered(schema_id):
            stale.append(path)
    return stale


def write_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    """(Re)write every schema file in `directory`; the paths that changed."""
    changed = stale_files(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for schema_id, name in SCHEMA_FILES.items():
        path = directory / name
        if path in changed:
            path.write_text(_rendered(schema_id), encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_asd.mqtt.schemas",
        description="Generate the MQTT payload JSON Schemas from the payload models.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the schema files")
    action.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    parser.add_argument(
        "--dir", type=Path, default=SCHEMA_DIR, help=f"schema folder (default {SCHEMA_DIR})"
    )
    args = parser.parse_args(argv)
    if args.write:
        for path in write_files(args.dir):
            print(f"wrote {path}")
        return 0
    stale = stale_files(args.dir)
    for path in stale:
        print(f"stale: {path} (run python -m edge_asd.mqtt.schemas --write)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
