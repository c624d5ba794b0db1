"""Reading the user's files (configuration, tasks): text, YAML, and values quoted in errors.

A file is read up to a cap (:data:`MAX_CONFIG_BYTES`, :data:`MAX_TASKS_BYTES`), so
``/dev/zero`` or a runaway generator is an error, not a hang that eats memory; a leading
UTF-8 byte order mark is dropped. YAML is parsed into nodes first and checked before any
Python value is built: aliases (``*name``) may repeat at most :data:`MAX_ALIAS_NODES` nodes in
all, so a few hundred bytes of "billion laughs" fail at once instead of expanding to
gigabytes; a key given twice in one mapping is an error naming it and its lines (PyYAML would
keep the last one silently). Whatever PyYAML raises while reading (a raw control character,
an integer too long to convert, nesting too deep) is one :class:`ConfigError` line naming the
file and the line. Every value quoted in an error is cut by :func:`shown`, so no message
repeats a huge input.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from ._terminal import one_line
from .errors import ConfigError

__all__ = (
    "MAX_ALIAS_NODES",
    "MAX_CONFIG_BYTES",
    "MAX_TASKS_BYTES",
    "SHOWN_CHARS",
    "YamlDocument",
    "load_yaml",
    "read_text",
    "readable",
    "shown",
)

MAX_ALIAS_NODES = 10_000
"""Nodes that aliases may add to a YAML document, beyond the ones written out in it."""

MAX_CONFIG_BYTES = 1 << 20
"""The largest configuration file read (1 MiB): real ones are a few hundred bytes."""

MAX_TASKS_BYTES = 64 << 20
"""The largest tasks file read (64 MiB): thousands of long prompts, still parsed in seconds."""

SHOWN_CHARS = 80
"""The longest excerpt of a value an error message quotes."""

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = SHOWN_CHARS
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 8


def shown(value: object) -> str:
    """A short ``repr`` of ``value`` for an error message: at most :data:`SHOWN_CHARS`
    characters, containers cut after a few items (cheap, however large the value)."""
    text = _REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def readable(message: str) -> str:
    """A pydantic message as the tail of ours: ``Field required`` -> ``field required``."""
    return message[0].lower() + message[1:] if message else message


def read_text(path: Path, what: str, limit: int) -> str:
    """The file as UTF-8 text, line ends untouched, a leading byte order mark dropped.

    At most ``limit`` bytes are read (one more, to tell a file of exactly ``limit`` from a
    bigger one), so a device or an endless pipe cannot hold the command. A missing,
    unreadable or bigger file, or one that is not UTF-8, is a one-line :class:`ConfigError`
    naming ``path``.
    """
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ConfigError(
            f"{path}: a {what} file may hold at most {limit} bytes ({limit >> 20} MiB); "
            "this one is bigger"
        )
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at position {exc.start})"
        ) from None


class YamlDocument:
    """A parsed YAML document: its value, and its root node (for the line of each item)."""

    __slots__ = ("data", "node")

    def __init__(self, data: Any, node: yaml.Node | None) -> None:
        self.data = data
        self.node = node


def load_yaml(path: Path, text: str) -> YamlDocument:
    """Parse ``text`` (read from ``path``) safely: plain data only, aliases bounded,
    duplicate keys refused.

    Raises:
        ConfigError: Invalid YAML (with its line), an alias bomb, a key given twice, a value
            PyYAML cannot build (a raw control character, an integer of more than 4300
            digits), or nesting too deep to parse; the message starts with ``path``.
    """
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # reads the whole text: a raw control character fails here
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(None, None)
        _check(path, node)
        return YamlDocument(loader.construct_document(node), node)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            f"{path}: invalid YAML at line {line}: control character U+{exc.character:04X} is "
            "not allowed (in a double-quoted string write it as an escape, e.g. \\x1b)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {one_line(problem)[:200]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except _Unbuildable as exc:
        raise ConfigError(
            f"{path}: invalid YAML at line {exc.line}: {one_line(exc.problem)[:200]}"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


class _Unbuildable(Exception):
    """A node PyYAML parsed but could not turn into a value (say an integer of 5000 digits,
    past Python's conversion limit): what went wrong, and the node's line."""

    def __init__(self, problem: str, line: int) -> None:
        self.problem = problem
        self.line = line


_LoaderBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when built


class _Loader(_LoaderBase):  # type: ignore[misc]  # PyYAML ships no annotations
    """The safe loader (libyaml's when installed), its errors tied to the node's line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as exc:
            if isinstance(exc, (yaml.YAMLError, ConfigError)):
                raise
            problem = str(exc).split(";")[0]  # not Python's advice (set_int_max_str_digits)
            raise _Unbuildable(problem, node.start_mark.line + 1) from None


def _check(path: Path, root: yaml.Node) -> None:
    """Refuse alias bombs, self-referencing aliases and duplicate keys, before constructing."""
    sizes: dict[int, int] = {}  # node id -> nodes it stands for once aliases are expanded
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            line = node.start_mark.line + 1
            raise ConfigError(f"{path}: line {line}: a YAML alias refers to its own node")
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            _no_duplicate_keys(path, node)
            total += sum(size(key) + size(value) for key, value in node.value)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    if size(root) - len(sizes) > MAX_ALIAS_NODES:
        raise ConfigError(
            f"{path}: YAML aliases (*name) would repeat more than {MAX_ALIAS_NODES} nodes "
            "(an alias bomb?); write the values out instead"
        )


def _no_duplicate_keys(path: Path, node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line, name = key.start_mark.line + 1, (key.tag, key.value)
        if name in seen:
            raise ConfigError(
                f"{path}: line {line}: duplicate key {shown(key.value)} "
                f"(first at line {seen[name]}); give each key once"
            )
        seen[name] = line
