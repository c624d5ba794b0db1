"""The docs run as written, and cite only files that exist.

Every fenced block of ``README.md`` and ``docs/*.md`` whose language is ``python``/``py``,
``sh``/``bash``/``shell`` or ``console`` is a test case, named ``file:line`` (its opening
fence). Each runs the way a reader would run it from a clone, offline:

- in a fresh temporary copy of the clone (the repository's files, as ``git ls-files`` lists
  them with the new ones not ignored: ``examples/tasks.jsonl`` is there, and whatever a block
  writes is thrown away), with ``.venv`` linking to the virtualenv the tests run in and its
  ``bin`` first on ``PATH``: ``python``, ``pip``, ``xzatoma`` and ``.venv/bin/xzatoma`` are
  that virtualenv's, and no ``XZATOMA_*`` or ``OTEL_*`` variable is inherited;
- a Python block as ``python -W default block.py``; one with a top-level ``await`` as its body
  would run in ``python -m asyncio``: in one asyncio event loop. It must exit 0 and print no
  warning;
- a shell block (``sh``, ``bash``, ``shell``) as ``bash -euo pipefail block.sh``: every
  command must succeed;
- a ``console`` block's ``$ `` lines are the commands (run as a shell block), the other lines
  the output they print: each must appear, in order, in what the commands printed (a ``...``
  line stands for any output).

Writing docs: a block that cannot run offline and quickly (it needs a model server, Redis or
Ray on another host, an index to ``pip install`` from, a server that keeps running) says so
with the word ``fragment`` after its language, as in ```` ```python fragment ```` or
```` ```sh fragment ```` (GitHub still highlights it as Python or shell). A fragment is still
checked: Python must compile (top-level ``await`` allowed) and import only names that
``xzatoma`` has; shell must pass ``bash -n``. Prefer a block that runs: the scripted model
(``xzatoma.testing.ScriptedProvider``, ``--provider scripted``) and ``xzatoma demo`` need no
server.

The second half of this module checks citations: every repository path that the docs, the
examples, ``Makefile``, ``.ci/``, ``pyproject.toml`` and the comments and docstrings of the
code name (``examples/tasks.jsonl``, ``tests/_http_server.py``, ``../examples/quickstart.py``) and
every relative Markdown link and its ``#anchor`` must exist.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from _doc_blocks import (
    ROOT,
    Block,
    Citation,
    anchors,
    cited_paths,
    code_blocks,
    console_script,
    doc_files,
    exists,
    fenced_blocks,
    markdown_links,
    python_prose,
    repository_files,
)

BLOCKS = code_blocks()
FILES = repository_files()
RUNNABLE = [b for b in BLOCKS if not b.fragment]
FRAGMENTS = [b for b in BLOCKS if b.fragment]
BIN = Path(sysconfig.get_path("scripts"))
TIMEOUT = 150
"""Seconds one block may take; the slowest today (promtool) takes about 5 s on 2 busy cores."""

# Runs a block with top-level await as `python -m asyncio` would: one event loop for it all.
ASYNC_DRIVER = """\
import ast, asyncio, inspect, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as file:
    code = compile(file.read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__", "__file__": path}
result = eval(code, namespace)
if inspect.iscoroutine(result):
    asyncio.run(result)
"""


def _compile(block: Block) -> object:
    return compile(
        block.text, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )


def _is_async(block: Block) -> bool:
    code = _compile(block)
    assert hasattr(code, "co_flags")
    return bool(code.co_flags & 0x80)  # CO_COROUTINE: the module awaits at top level


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A reader's clone: a copy of the repository's files, and .venv."""
    for name in FILES:
        if (ROOT / name).is_file():  # a new file may be gone again: others edit the tree too
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / name)
    if sys.prefix != sys.base_prefix:
        (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return tmp_path


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XZATOMA_", "OTEL_"))}
    env.pop("PYTHONPATH", None)  # the virtualenv has xzatoma installed, as a reader's has
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = sys.prefix
    env["PIP_NO_INDEX"] = "1"  # offline, and a second guard on the virtualenv (INSTALLS)
    return env


def _run(block: Block, command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, cwd=cwd, env=_environment(), capture_output=True, text=True,
            timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id} took over {TIMEOUT} s\n{_report(block, exc.stdout, exc.stderr)}")


def _report(block: Block, stdout: object, stderr: object) -> str:
    def text(value: object) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")

    return (
        f"--- {block.id} ({' '.join(block.info)}) ---\n{block.text}"
        f"--- stdout ---\n{text(stdout)}\n--- stderr ---\n{text(stderr)}"
    )


def _contains_in_order(expected: list[str], printed: list[str]) -> str | None:
    """The first expected line not found (in order) among the printed ones, or None."""
    lines = iter(line.rstrip() for line in printed)
    for want in expected:
        if want.strip() in ("", "..."):
            continue
        if not any(line == want.rstrip() for line in lines):
            return want
    return None


INSTALLS = re.compile(r"\bpip3?\s+install\b|^\s*(?:\$ )?make\b", re.MULTILINE)
"""What would change the virtualenv the tests run in (``pip install .`` replaces its editable
xzatoma with a copy; ``make`` reinstalls it): never run, whatever the block says."""


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_block_runs(block: Block, workdir: Path) -> None:
    if block.kind != "python" and INSTALLS.search(block.text):
        pytest.fail(f"{block.id} installs into the virtualenv: mark it as a fragment\n{block.text}")
    expected: list[str] = []
    if block.kind == "python":
        (workdir / "block.py").write_text(block.text, encoding="utf-8")
        python = str(BIN / "python")
        if _is_async(block):
            command = [python, "-W", "default", "-c", ASYNC_DRIVER, "block.py"]
        else:
            command = [python, "-W", "default", "block.py"]
    else:
        script = block.text
        if block.kind == "console":
            script, expected = console_script(block.text)
        (workdir / "block.sh").write_text(script, encoding="utf-8")
        command = ["bash", "-euo", "pipefail", "block.sh"]
    done = _run(block, command, workdir)
    report = _report(block, done.stdout, done.stderr)
    assert done.returncode == 0, f"{block.id} exited {done.returncode}\n{report}"
    assert "Traceback (most recent call last)" not in done.stderr, (
        f"{block.id}: a traceback\n{report}"
    )
    if block.kind == "python":
        assert "Warning" not in done.stderr, f"{block.id} printed a warning\n{report}"
    missing = _contains_in_order(expected, done.stdout.splitlines())
    assert missing is None, f"{block.id} shows output it does not print: {missing!r}\n{report}"


@pytest.mark.parametrize("block", FRAGMENTS, ids=[b.id for b in FRAGMENTS])
def test_fragment_is_valid(block: Block) -> None:
    if block.kind == "python":
        try:
            _compile(block)
        except SyntaxError as exc:
            pytest.fail(f"{block.id} does not compile: {exc}\n{block.text}")
        for module, name in _xzatoma_imports(block.text):
            imported = importlib.import_module(module)
            assert name is None or hasattr(imported, name), (
                f"{block.id}: {module} has no {name}\n{block.text}"
            )
        return
    script = console_script(block.text)[0] if block.kind == "console" else block.text
    checked = subprocess.run(
        ["bash", "-n"], input=script, capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, f"{block.id}: bash -n: {checked.stderr}\n{block.text}"


def _xzatoma_imports(source: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "xzatoma":
            assert node.module is not None
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "xzatoma"]
    return found


def test_blocks_are_found() -> None:
    """The parser sees the blocks (a change that hid them all would pass every case above)."""
    assert len(RUNNABLE) >= 5
    assert {b.path for b in BLOCKS} >= {"README.md", "docs/getting-started.md"}
    assert all(b.kind for b in BLOCKS)


def test_only_code_blocks_are_marked_as_fragments() -> None:
    """``fragment`` means something only on a block the tests would run: elsewhere, or
    misspelt, it would mislead the writer."""
    for doc in doc_files():
        for block in fenced_blocks(doc):
            extra = [word for word in block.info[1:] if word != "fragment"]
            assert not (block.fragment and not block.kind), f"{block.id}: not a code block"
            assert not (block.kind and extra), f"{block.id}: unknown words {extra}"


def test_readme_quick_start_runs_and_prints_why_a_run_failed() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    start = text.index(section)
    line = text[:start].count("\n") + 1
    runnable = [
        b for b in RUNNABLE if b.path == "README.md" and b.kind == "python" and b.line > line
    ]
    assert runnable, "the README's Quick start has no Python block that runs"
    quick_start = runnable[0]
    assert quick_start.line < line + section.count("\n")
    assert "result.error" in quick_start.text, "the Quick start does not print why a run failed"


# --- citations -------------------------------------------------------------------------------


def _prose_of(path: str) -> list[tuple[int, str]]:
    """What in ``path`` is written for people: all of a doc, a config or a script; only the
    comments and docstrings of tests' and benchmarks' Python (their strings are data)."""
    text = (ROOT / path).read_text(encoding="utf-8")
    if path.endswith(".py") and not path.startswith(("xzatoma/", "examples/")):
        return list(python_prose(text))
    return list(enumerate(text.splitlines(), 1))


def _cited_sources() -> list[str]:
    def wanted(path: str) -> bool:
        if path.startswith(("docs/", "examples/", ".ci/")) or path.endswith(".md"):
            return not path.endswith(".json")  # a dashboard: data, no prose
        if path.startswith(("xzatoma/", "tests/", "bench/")):
            return path.endswith(".py")
        return path in ("Makefile", "pyproject.toml")

    return sorted(p for p in FILES if wanted(p))


def _describe(citations: list[Citation]) -> str:
    return "\n".join(f"  {c.source}:{c.line}: {c.target}" for c in citations)


def test_cited_files_exist() -> None:
    missing = [
        citation
        for source in _cited_sources()
        for citation in cited_paths(source, _prose_of(source))
        if not exists(citation.resolved, FILES)
        and not (citation.beside and exists(f"{citation.beside}/{citation.resolved}", FILES))
    ]
    assert not missing, "cited, but not in the repository:\n" + _describe(missing)


def test_markdown_links_resolve() -> None:
    broken = [
        link
        for source in sorted(p for p in FILES if p.endswith(".md"))
        for link in markdown_links(source, _outside_code((ROOT / source).read_text("utf-8")))
        if not _resolves(link)
    ]
    assert not broken, "links to a missing file or heading:\n" + _describe(broken)


def _resolves(link: Citation) -> bool:
    if not exists(link.resolved, FILES):
        return False
    if link.anchor is None or not link.resolved.endswith(".md"):
        return True
    return link.anchor in anchors((ROOT / link.resolved).read_text(encoding="utf-8"))


def _outside_code(markdown: str) -> str:
    """``markdown`` with its fenced blocks and inline code blanked (the line numbers kept)."""
    lines = markdown.splitlines()
    for block in fenced_blocks_of(markdown):
        for index in range(block[0], block[1]):
            lines[index] = ""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in lines)


def fenced_blocks_of(markdown: str) -> list[tuple[int, int]]:
    """The (first, end) line indexes of each fenced block's content."""
    spans: list[tuple[int, int]] = []
    lines = markdown.splitlines()
    fence: str | None = None
    start = 0
    for index, line in enumerate(lines):
        match = re.match(r"^ *(`{3,}|~{3,})(.*)$", line)
        if match is None or (match[1][0] == "`" and "`" in match[2]):
            continue
        if fence is None:
            fence, start = match[1], index + 1
        elif match[1][0] == fence[0] and len(match[1]) >= len(fence) and not match[2].strip():
            spans.append((start, index))
            fence = None
    return spans


def test_the_checks_see_what_they_are_for(tmp_path: Path) -> None:
    """Each helper on a small case it must catch: a missing path, an anchor, console output
    out of order, a block inside a list item, a fence shown inside a longer one."""
    cited = list(cited_paths("docs/x.md", [(3, "`examples/nope.jsonl`, (../tests/conftest.py).")]))
    assert [c.resolved for c in cited_paths("a/b.py", [(1, "see NOTES.md")])] == ["NOTES.md"]
    assert [(c.line, c.resolved) for c in cited] == [
        (3, "examples/nope.jsonl"),
        (3, "tests/conftest.py"),
    ]
    assert not exists("examples/nope.jsonl", FILES)
    assert exists("tests/conftest.py", FILES)
    assert exists("examples/", FILES)
    assert exists("dist/xzatoma-0.1.0.tar.gz", FILES)  # generated
    assert anchors("# A b\n## `x` (y): z\n```sh\n# not a heading\n```\n# A b\n") == {
        "a-b",
        "x-y-z",
        "a-b-1",
    }
    links = list(markdown_links("docs/x.md", "[c](cost.md#the-quota) [s](#here) [w](https://a/b)"))
    assert [(c.resolved, c.anchor) for c in links] == [
        ("docs/cost.md", "the-quota"),
        ("docs/x.md", "here"),
    ]
    assert console_script("$ echo a \\\n  b\na b\n") == ("echo a \\\n  b\n", ["a b"])
    assert _contains_in_order(["a", "...", "c"], ["a", "b", "c"]) is None
    assert _contains_in_order(["c", "a"], ["a", "b", "c"]) == "a"
    doc = tmp_path / "doc.md"
    doc.write_text(
        "- item:\n\n  ```sh fragment\n  ls\n  ```\n\n````text\n```python\nx\n```\n````\n"
    )
    [listed, shown] = fenced_blocks(doc, tmp_path)
    assert (listed.id, listed.kind, listed.fragment, listed.text) == (
        "doc.md:3",
        "shell",
        True,
        "ls\n",
    )
    assert (shown.kind, shown.text) == (None, "```python\nx\n```\n")
