"""The docs as data for ``tests/test_docs.py``: their fenced code blocks, and the repository
files that the docs, the examples and the code's comments cite.

Markdown is read the way CommonMark (and so GitHub) reads a fence: up to three spaces (more
inside a list item), three or more backticks or tildes, an info string whose first word is
the language; the block ends at a fence of the same character at least as long.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FRAGMENT = "fragment"
"""The word after the language that marks a block as not runnable: ```` ```python fragment ````."""

LANGUAGES = {
    "python": "python",
    "py": "python",
    "sh": "shell",
    "bash": "shell",
    "shell": "shell",
    "console": "console",
}
"""The info strings whose blocks the tests run (or, as fragments, check), and their kind."""

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block of a Markdown file."""

    path: str
    """The file, relative to the repository root."""
    line: int
    """The line of the opening fence, from 1."""
    info: tuple[str, ...]
    """The info string's words: the language first."""
    text: str
    """The content, without the fences and the fence's indentation."""

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def language(self) -> str:
        return self.info[0] if self.info else ""

    @property
    def kind(self) -> str | None:
        """``python``, ``shell`` or ``console`` for a block the tests run; else None."""
        return LANGUAGES.get(self.language)

    @property
    def fragment(self) -> bool:
        return FRAGMENT in self.info[1:]


def fenced_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of the Markdown file ``path``, nested ones left inside their outer."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.relative_to(root).as_posix()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [_dedent(line, indent) for line in lines[index + 1 : end]]
        text = "\n".join(body) + "\n" if body else ""
        blocks.append(Block(name, index + 1, tuple(opening["info"].split()), text))
        index = end + 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, indent) :]


def doc_files(root: Path = ROOT) -> list[Path]:
    """The README and every page of ``docs/``: the files whose blocks must run."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def code_blocks(root: Path = ROOT) -> list[Block]:
    """The Python and shell blocks of :func:`doc_files`, in file and line order."""
    return [block for doc in doc_files(root) for block in fenced_blocks(doc, root) if block.kind]


def console_script(text: str) -> tuple[str, list[str]]:
    """A console block's commands (its ``$ `` lines, with their ``\\`` continuations) as one
    script, and the rest of its lines: the output it shows."""
    commands: list[str] = []
    output: list[str] = []
    continued = False
    for line in text.splitlines():
        if continued:
            commands.append(line)
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            output.append(line)
            continue
        continued = line.endswith("\\")
    return "\n".join(commands) + "\n", output


# --- the files cited -------------------------------------------------------------------------

_TOP = r"(?:xzatoma|tests|bench|docs|examples|\.ci|\.github)"
_CITED_PATH = re.compile(rf"(?<![\w./-])(?P<path>(?:\.\./)*{_TOP}/[\w./*<>{{}}$-]*)")
_TOP_DOC = re.compile(r"(?<![\w./-])(?P<path>[A-Z][A-Z_-]*\.md)\b")
"""A bare ``README.md`` or ``CHANGELOG.md``: beside the citing file, or at the root."""
_MD_LINK = re.compile(r"\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_TEMPLATE = re.compile(r"[*<>{}$]")
_NOT_A_PATH = re.compile(r"^xzatoma/(?:VERSION|\d[\w.]*)$")
"""``User-Agent: xzatoma/VERSION``: a product token, not a file."""

GENERATED = ("dist/", "build/", ".venv", ".cache/", "bench/.venv-peers/", "bench/results/")
"""Paths the build, the tests or the benchmarks write, which a clean checkout does not hold
(``.gitignore`` lists them): citing them is not citing a missing file."""


@dataclass(frozen=True, slots=True)
class Citation:
    """A repository path (or a Markdown link) mentioned in a file."""

    source: str
    """The citing file, relative to the repository root."""
    line: int
    target: str
    """As written."""
    resolved: str
    """Relative to the repository root, without an ``#anchor``."""
    anchor: str | None = None
    beside: str | None = None
    """For a bare file name: the citing file's directory, where it may be instead."""


def repository_files(root: Path = ROOT) -> frozenset[str]:
    """The files of the repository: tracked, or new and not ignored (what the next commit
    holds); without git (an unpacked sdist), every file outside the generated directories."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        found = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        return frozenset(p for p in found if not is_generated(p) and "__pycache__" not in p)
    return frozenset(p for p in listed.split("\0") if p and (root / p).exists())


def is_generated(path: str) -> bool:
    return path.startswith(GENERATED)


def exists(path: str, files: frozenset[str]) -> bool:
    """``path`` is a file of ``files``, a directory holding some, or a generated path."""
    path = path.rstrip("/")
    if path in ("", ".") or path in files or is_generated(path + "/"):
        return True
    prefix = path + "/"
    return any(f.startswith(prefix) for f in files)


def cited_paths(source: str, lines: Iterable[tuple[int, str]]) -> Iterator[Citation]:
    """The repository paths (``examples/tasks.jsonl``, ``../docs/cost.md``) in ``lines``; a
    ``../`` path is resolved from ``source``'s directory, any other from the root."""
    base = Path(source).parent
    for number, text in lines:
        for match in _CITED_PATH.finditer(text):
            target = match["path"].rstrip(".")
            if _TEMPLATE.search(target) or _NOT_A_PATH.match(target):
                continue  # a pattern (tests/test_*.py) or a template (tests/<area>.py)
            resolved = _normalise(base / target) if target.startswith("../") else target
            yield Citation(source, number, target, resolved)
        for match in _TOP_DOC.finditer(text):
            yield Citation(source, number, match["path"], match["path"], beside=base.as_posix())


def markdown_links(source: str, text: str) -> Iterator[Citation]:
    """The relative links of a Markdown file: ``[x](cost.md)``, ``[x](#section)``."""
    base = Path(source).parent
    for number, line in enumerate(text.splitlines(), 1):
        for match in _MD_LINK.finditer(line):
            target = match["target"].strip("<>")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = _normalise(base / path) if path else source
            yield Citation(source, number, target, resolved, anchor or None)


def _normalise(path: Path) -> str:
    parts: list[str] = []
    for part in path.as_posix().split("/"):
        if part == "..":
            if parts:
                parts.pop()
            else:
                parts.append(part)  # above the root: never a repository file
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def python_prose(source: str) -> Iterator[tuple[int, str]]:
    """The comments and the docstrings (any string statement) of a Python file, by line."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for offset, line in enumerate(node.value.value.splitlines()):
                yield node.lineno + offset, line


def anchors(markdown: str) -> frozenset[str]:
    """The ``#anchors`` GitHub makes of a Markdown file's headings (outside code blocks)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    fence: str | None = None
    for line in markdown.splitlines():
        opening = _FENCE.match(line)
        if opening is not None and not (opening["fence"][0] == "`" and "`" in opening["info"]):
            mark = opening["fence"]
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence) and not opening["info"].strip():
                fence = None
            continue
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fence is None and heading is not None:
            slug = github_slug(heading[1])
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(found)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped, spaces to
    ``-`` (github-slugger)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")
