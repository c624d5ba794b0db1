"""Text from outside (a model, an endpoint, a file) on its way to a terminal or a pipe.

A model's label or output, or an endpoint's error body, may hold escape sequences, other
control characters, bidi overrides that reorder what the reader sees, or lone surrogates
no encoding can write. :func:`printable` is the one place such text is made safe to print;
every printer of the command line calls it. ``--json`` keeps the exact text instead
(:func:`json_text`), and :func:`tolerant_streams` makes sure no print can end in a
``UnicodeEncodeError``, whatever encoding stdout has.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections.abc import Iterator
from typing import TextIO

__all__ = ("json_text", "one_line", "printable", "tolerant_streams")

# Invisible or dangerous on a terminal: C0 controls, DEL, C1 controls, bidi marks, overrides
# and isolates, and lone surrogates (text decoded with surrogateescape, or an endpoint's
# "\ud800"). Multi-line text keeps its newlines and tabs; one-line contexts escape them too.
_DANGEROUS = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_MULTI_LINE = re.compile(f"[\x00-\x08\x0b-\x1f{_DANGEROUS}]")
_ONE_LINE = re.compile(f"[\x00-\x1f{_DANGEROUS}]")
_SPACES = re.compile(r"[ \t\n\r\f\v]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str, *, single_line: bool = False) -> str:
    r"""``text`` with every character that could act on a terminal shown as an escape.

    ESC becomes ``\x1b``, a right-to-left override ``\u202e``, a lone surrogate
    ``\udcff``; so does every other C0 control (but newline and tab, unless
    ``single_line``), DEL, the C1 controls and the bidi marks. Everything else, other
    scripts and emoji included, is left as it is. Text with nothing to escape is returned
    unchanged (one regex scan).
    """
    pattern = _ONE_LINE if single_line else _MULTI_LINE
    return pattern.sub(_visible, text) if pattern.search(text) else text


def one_line(text: str) -> str:
    """``text`` for a one-line context (an error line, a label): runs of ASCII whitespace,
    newlines included, become one space; everything else as :func:`printable`."""
    return printable(_SPACES.sub(" ", text).strip(), single_line=True)


def json_text(data: object, stream: TextIO) -> str:
    r"""``data`` as indented JSON that keeps the exact text and can always be written.

    Non-ASCII text stays readable when ``stream`` writes UTF-8 or has no encoding (an
    ``io.StringIO``), else it is ``\uXXXX`` escaped; a lone surrogate, which no UTF
    encoding can write, becomes its JSON escape (``\ud800``), which a JSON reader decodes
    back to the same string.
    """
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower()
    text = json.dumps(data, indent=2, ensure_ascii=not encoding.startswith("utf"))
    if _SURROGATE.search(text):  # only inside JSON strings, where \uXXXX is their escape
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


@contextlib.contextmanager
def tolerant_streams() -> Iterator[None]:
    r"""While a command runs, stdout (like stderr already) writes what its encoding cannot
    encode as a backslash escape (``é`` as ``\xe9`` under ``PYTHONIOENCODING=ascii``)
    instead of raising ``UnicodeEncodeError`` after the work is done."""
    changed: list[tuple[io.TextIOWrapper, str]] = []
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            with contextlib.suppress(ValueError, OSError):  # closed or detached
                stream.reconfigure(errors="backslashreplace")
                changed.append((stream, "strict"))
    try:
        yield
    finally:
        for stream, errors in changed:
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors=errors)
