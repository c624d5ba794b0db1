"""A configuration file's pydantic error as one line that names the key by its dotted path.

pydantic reports every problem with its location as a tuple and its own wording; a user
editing YAML wants the first problem, the key as they would write it
(``agent.subagent.max_depht``), the closest key they may have meant, and no huge value
quoted back. A key that looks like a secret gets the rule instead: no API key in a file.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeGuard, get_origin

import pydantic

from ._files import readable, shown

__all__ = ("describe",)

_API_KEY_HINT = (
    "an API key is never read from a file or a flag; put the name of the environment "
    "variable that holds it in provider.api_key_env (or pass --api-key-env NAME)"
)
_SECRET_KEYS = ("api_key", "key", "token", "api_token")


def describe(exc: pydantic.ValidationError, root: type[pydantic.BaseModel]) -> str:
    """The first problem in ``exc``, named by its dotted key under ``root``."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        if loc[-1] in _SECRET_KEYS:
            return f"unknown key '{key}': {_API_KEY_HINT}"
        known = _known_keys(root, loc[:-1])
        close = difflib.get_close_matches(loc[-1][:100], known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key {shown(key)}{hint}; allowed here: {', '.join(known)}"
    if error["type"] in ("model_type", "dict_type"):
        return f"{key} must be a mapping of keys, got {shown(error.get('input'))}"
    got = error.get("input")
    quoted = "" if isinstance(got, Mapping) else f", got {shown(got)}"
    return f"{key}: {readable(error['msg'])}{quoted}"


def _known_keys(root: type[pydantic.BaseModel], loc: list[str]) -> list[str]:
    """The keys allowed in the section at ``loc`` (the section a key was unknown in)."""
    model = root
    parts = iter(loc)
    for part in parts:
        annotation = model.model_fields[part].annotation
        nested = [a for a in getattr(annotation, "__args__", (annotation,)) if _is_model(a)]
        model = nested[0] if nested else pydantic.BaseModel
        if get_origin(annotation) in (dict, list):  # `pricing.{MODEL}`, `mcp_servers.0`
            next(parts, None)
    return list(model.model_fields)


def _is_model(value: object) -> TypeGuard[type[pydantic.BaseModel]]:
    return isinstance(value, type) and issubclass(value, pydantic.BaseModel)
