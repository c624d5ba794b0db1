"""Text from outside (a model, an endpoint, a file) on its way to a terminal or a pipe.

A model's label or output, or an endpoint's error body, may hold escape sequences, other
control characters, bidi overrides that reorder what the reader sees, or lone surrogates
no encoding can write. :func:`printable` is the one place such text is made safe to print;
every printer of the command line calls it. ``--json`` keeps the exact text instead
(:func:`json_text`, with the same characters as JSON escapes), and :func:`tolerant_streams`
makes sure no print can end in a ``UnicodeEncodeError`` (whatever encoding and error
handler the streams have) or fail on a stream the shell closed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from typing import TextIO

__all__ = ("json_text", "one_line", "printable", "tolerant_streams")

# Invisible or dangerous on a terminal: C0 controls, DEL, C1 controls, bidi marks, overrides
# and isolates, and lone surrogates (text decoded with surrogateescape, or an endpoint's
# "\ud800"). Multi-line text keeps its newlines and tabs; one-line contexts escape them too.
# U+2028 and U+2029 (line and paragraph separators) break lines for some readers: one-line
# contexts and JSON documents escape them too.
_DANGEROUS = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_MULTI_LINE = re.compile(f"[\x00-\x08\x0b-\x1f{_DANGEROUS}]")
_ONE_LINE = re.compile(f"[\x00-\x1f\u2028\u2029{_DANGEROUS}]")
_IN_JSON = re.compile(f"[\u2028\u2029{_DANGEROUS}]")  # json.dumps escapes C0 itself
_SPACES = re.compile(r"[ \t\n\r\f\v]+")
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
    ``io.StringIO``), else it is ``\uXXXX`` escaped. What could act on a terminal (DEL,
    the C1 controls such as the 8-bit CSI U+009B, bidi marks and overrides, U+2028 and
    U+2029) and lone surrogates, which no UTF encoding can write, are written as their JSON
    escapes (``\u009b``, ``\ud800``): a JSON reader decodes them back to the same string.
    """
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower()
    text = json.dumps(data, indent=2, ensure_ascii=not encoding.startswith("utf"))
    if _IN_JSON.search(text):  # only inside JSON strings, where \uXXXX is their escape
        text = _IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


_NEVER_RAISE = frozenset({"backslashreplace", "replace", "xmlcharrefreplace", "namereplace"})
"""Error handlers that write every character somehow (``surrogateescape`` does not: it
only writes the surrogates it made, and raises on ``é`` under an ASCII locale)."""


@contextlib.contextmanager
def tolerant_streams() -> Iterator[None]:
    r"""While a command runs, stdout and stderr write what their encoding cannot encode as a
    backslash escape (``é`` as ``\xe9`` under ``LC_ALL=C``) instead of raising
    ``UnicodeEncodeError`` after the work is done, whatever error handler they had; and a
    stream the shell closed (``>&-``, which leaves ``sys.stdout`` None) writes to
    ``os.devnull``, so the command carries on without that output."""
    changed: list[tuple[io.TextIOWrapper, str]] = []
    replaced: list[tuple[str, TextIO | None]] = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            replaced.append((name, stream))
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
        elif isinstance(stream, io.TextIOWrapper) and stream.errors not in _NEVER_RAISE:
            with contextlib.suppress(ValueError, OSError):  # closed or detached
                changed.append((stream, stream.errors or "strict"))
                stream.reconfigure(errors="backslashreplace")
    try:
        yield
    finally:
        for stream, errors in changed:
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors=errors)
        for name, original in replaced:
            getattr(sys, name).close()
            setattr(sys, name, original)
