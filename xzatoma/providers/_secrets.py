"""Keeping the API key out of every message: cleaning it on the way in, redacting it on the way out.

A key travels as ``Authorization: Bearer <key>``, and the texts that can quote it (an error
body that echoes the header, an httpx or h11 error that shows the header as bytes, a URL that
carries it percent-encoded) each spell it differently. :class:`Redactor` knows every spelling.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

from ..errors import ConfigError

__all__ = ("REDACTED", "Redactor", "clean_api_key")

REDACTED = "[redacted]"
"""What stands in a message where a secret was."""


def clean_api_key(key: str, source: str = "api_key") -> str:
    """The key without surrounding whitespace (a file written by ``echo``, CRLF, a secret mount).

    An HTTP header can carry neither a control character nor a non-ASCII one, so a key that
    still holds one after stripping is refused here, in a message that names ``source``
    (e.g. ``environment variable OPENAI_API_KEY``) and never the value: httpx would refuse it
    later with an error that quotes the whole header.

    Raises:
        ConfigError: The key is empty after stripping, or holds a control or non-ASCII
            character.
    """
    cleaned = key.strip()
    if not cleaned:
        raise ConfigError(f"{source} is empty (only whitespace)")
    if cleaned.isascii() and cleaned.isprintable():
        return cleaned  # the common case: one scan each, no per-character Python loop
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in cleaned):
        raise ConfigError(
            f"{source} holds a control character inside the key; write the key on one line "
            "with nothing but the key"
        )
    raise ConfigError(
        f"{source} holds a non-ASCII character; an HTTP header cannot carry it, so check "
        "that the key was copied whole and nothing else (a smart quote, a non-breaking space)"
    )


def _escaped(text: str, quote_char: str) -> str:
    """``text`` as it appears inside a ``repr`` quoted with ``quote_char``."""
    body = repr(text)[1:-1]
    return body if repr(text)[0] == quote_char else body.replace(quote_char, "\\" + quote_char)


_SPELLINGS: tuple[Callable[[str], str], ...] = (
    lambda s: _escaped(s, "'"),  # repr(), and str() of a tuple or exception holding it
    lambda s: _escaped(s, '"'),
    lambda s: repr(s.encode("utf-8", "backslashreplace"))[2:-1],  # bytes repr: h11 headers
    lambda s: json.dumps(s)[1:-1],  # an error body that is JSON
    lambda s: quote(s, safe=""),
    lambda s: quote(s),  # "/" kept, as in a URL path
    lambda s: quote_plus(s),  # a query string or form body
)


class Redactor:
    """Replaces every spelling of the given secrets in a text by ``[redacted]``.

    Spellings are the raw secret, its ``repr`` (either quote), its bytes ``repr``, JSON
    escaping, percent-encoding (``quote`` with and without ``/``, ``quote_plus``), and each
    of those escaped once more (a ``repr`` of a message that already held a ``repr``). Case is
    ignored, since servers upper- or lower-case percent-escapes. The pattern is built on the
    first error, not when the provider is made: the normal path never pays for it.
    """

    __slots__ = ("_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._secrets = tuple(s for s in secrets if s)
        self._pattern: re.Pattern[str] | None = None

    def __call__(self, text: str) -> str:
        if not self._secrets:
            return text
        if self._pattern is None:
            self._pattern = self._compile()
        return self._pattern.sub(REDACTED, text)

    def _compile(self) -> re.Pattern[str]:
        forms = set(self._secrets)
        for _ in range(2):
            forms |= {spell(form) for form in forms for spell in _SPELLINGS}
        ordered = sorted(forms, key=len, reverse=True)  # the longest spelling wins
        return re.compile("|".join(re.escape(form) for form in ordered), re.IGNORECASE)
