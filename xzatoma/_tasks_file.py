"""The tasks file of ``xzatoma batch``: JSONL or YAML, validated strictly, errors by line.

Types are strict, as in the configuration file: ``max_turns: "5"`` or ``max_turns: true``
is a type error naming the key (the model-facing tool arguments stay lenient: that is the
same :class:`~xzatoma.SubagentTask` validated without ``strict``). JSONL is split on ``\\n``
only (a trailing ``\\r`` of a CRLF file dropped), so U+2028, U+2029 or U+0085 inside a JSON
string is text, as JSON allows, not a line break.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pydantic
import yaml

from ._files import MAX_TASKS_BYTES, load_yaml, read_text, readable, shown
from ._subagent_models import SubagentTask
from .errors import ConfigError

__all__ = ("load_tasks",)


def load_tasks(path: str | os.PathLike[str]) -> list[SubagentTask]:
    """Read the tasks of ``xzatoma batch``: ``.jsonl`` (one JSON object per line) or
    ``.yaml``/``.yml`` (a list of tasks, or a mapping with a ``tasks`` list).

    Raises :class:`ConfigError` naming the file and the line of the bad task.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".yaml", ".yml"):
        raise ConfigError(f"{path}: a tasks file must end in .jsonl, .yaml or .yml")
    text = read_text(path, "tasks", MAX_TASKS_BYTES)
    items = _jsonl_items(path, text) if suffix == ".jsonl" else _yaml_items(path, text)
    if not items:
        raise ConfigError(f"{path}: no tasks")
    return [_task(path, number, item) for number, item in items]


def _task(path: Path, number: int, item: object) -> SubagentTask:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{path}, line {number}: a task must be a mapping, got {shown(item)}")
    try:
        return SubagentTask.model_validate(item, strict=True)
    except pydantic.ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(SubagentTask.model_fields)
            detail = f"unknown key {shown(key)}; a task has: {allowed}"
        else:
            got = error.get("input")
            quoted = f", got {shown(got)}" if error["type"] != "missing" else ""
            detail = f"{key}: {readable(error['msg'])}{quoted}"
        raise ConfigError(f"{path}, line {number}: {detail}") from None


def _jsonl_items(path: Path, text: str) -> list[tuple[int, object]]:
    items: list[tuple[int, object]] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip(" \t"):
            continue
        try:
            items.append((number, json.loads(line, object_pairs_hook=_no_duplicates)))
        except _DuplicateKey as exc:
            raise ConfigError(
                f"{path}, line {number}: duplicate key {shown(exc.key)}; give each key once"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{path}, line {number}: invalid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{path}, line {number}: invalid JSON: nested too deeply") from None
    return items


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return data


def _yaml_items(path: Path, text: str) -> list[tuple[int, object]]:
    document = load_yaml(path, text)
    data, node = document.data, document.node
    if isinstance(data, Mapping) and set(data) == {"tasks"}:
        data = data["tasks"]
        if isinstance(node, yaml.MappingNode):
            node = node.value[0][1]
    if data is None:
        return []
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{path}: expected a list of tasks, or a mapping with a 'tasks' list")
    lines = [item.start_mark.line + 1 for item in node.value]
    return list(zip(lines, data, strict=True))
