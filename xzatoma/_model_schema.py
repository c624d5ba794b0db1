"""A tool's JSON schema as a model is shown it: pydantic's schema, made plain.

Small local models read a schema literally. They copy ``title`` annotations into the tool's
name (``parallel_subagentArgs``), fill a ``{"$ref": ...}`` in with the definition's own keys
(``"required": ["label", "task_prompt"]`` inside a task), and stumble over
``anyOf: [S, {"type": "null"}]``. So titles go, local definitions are written out where they
are used, and an optional ``T | None`` field is shown as ``T`` (it is not required: leaving
it out is what null means). What validates the arguments is still the pydantic model.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ("schema_for_models",)

_DATA_KEYS: Final = frozenset({"default", "examples", "const", "enum"})
"""Keywords whose values are data, not schemas: a ``title`` or ``$ref`` inside stays."""
_NAMED_SCHEMAS: Final = frozenset({"properties", "$defs", "definitions", "patternProperties"})
"""Keywords that map names (a property may be called ``title`` or ``enum``) to schemas."""
_DEFS: Final = "#/$defs/"
INLINE_BUDGET: Final = 5000
"""The most schema nodes written out: definitions used twice at every level of a deep model
would otherwise double the schema per level. Past it, the references stay."""


class _TooBig(Exception):
    pass


def schema_for_models(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without titles, with its ``$defs`` written out where they are used (a
    definition that refers to itself, and every one past :data:`INLINE_BUDGET`, stays a
    reference) and optional fields shown as their type."""
    plain: dict[str, Any] = without_titles(schema)
    definitions = plain.pop("$defs", None)
    if not isinstance(definitions, dict):
        definitions = {}
    try:
        inliner = _Inliner(definitions)
        inlined: dict[str, Any] = inliner.node(plain, ())
        left = {name: inliner.node(d, (name,)) for name, d in definitions.items()
                if _refers_to(inlined, name)}  # fmt: skip
    except _TooBig:  # no definition written out: the schema keeps its own size
        keeper = _Inliner({}, budget=None)
        inlined = keeper.node(plain, ())
        left = {name: keeper.node(d, ()) for name, d in definitions.items()}
    if left:
        inlined["$defs"] = left
    return inlined


class _Inliner:
    def __init__(self, definitions: dict[str, Any], budget: int | None = INLINE_BUDGET) -> None:
        self.definitions = definitions
        self.budget = budget

    def node(self, node: Any, seen: tuple[str, ...]) -> Any:
        if self.budget is not None:
            self.budget -= 1
            if self.budget < 0:
                raise _TooBig
        if isinstance(node, list):
            return [self.node(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        if _is_optional(node):
            rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            return self.node({**node["anyOf"][0], **rest}, seen)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS):
            name = ref.removeprefix(_DEFS)
            if name in self.definitions and name not in seen:
                rest = {k: v for k, v in node.items() if k != "$ref"}  # a description beside it
                return self.node({**self.definitions[name], **rest}, (*seen, name))
        out = {}
        for key, value in node.items():
            if key in _NAMED_SCHEMAS and isinstance(value, dict):
                out[key] = {name: self.node(sub, seen) for name, sub in value.items()}
            elif key in _DATA_KEYS:
                out[key] = value
            else:
                out[key] = self.node(value, seen)
        return out


def _is_optional(node: dict[str, Any]) -> bool:
    """``{"anyOf": [S, {"type": "null"}], "default": null}``: pydantic's ``S | None = None``."""
    choices = node.get("anyOf")
    return (
        "default" in node
        and node["default"] is None
        and isinstance(choices, list)
        and len(choices) == 2
        and isinstance(choices[0], dict)
        and choices[1] == {"type": "null"}
    )


def _refers_to(node: Any, name: str) -> bool:
    if isinstance(node, list):
        return any(_refers_to(item, name) for item in node)
    if not isinstance(node, dict):
        return False
    return node.get("$ref") == f"{_DEFS}{name}" or any(
        _refers_to(value, name) for value in node.values()
    )


def without_titles(schema: Any) -> Any:
    """``schema`` without its ``title`` annotations (and nothing else)."""
    if isinstance(schema, list):
        return [without_titles(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _NAMED_SCHEMAS and isinstance(value, dict):
            out[key] = {name: without_titles(sub) for name, sub in value.items()}
        elif key in _DATA_KEYS:
            out[key] = value
        else:
            out[key] = without_titles(value)
    return out
