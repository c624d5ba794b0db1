"""Keeping the API key out of every message: cleaning it on the way in, redacting it on the way out.

A key travels as ``Authorization: Bearer <key>``, and the texts that can quote it (an error
body that echoes the header, an httpx or h11 error that shows the header as bytes, a URL that
carries it percent-encoded) each spell it differently. :class:`Redactor` knows every spelling.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import quote, quote_plus

from .._text import replace_lone_surrogates
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


def _base64(text: str) -> tuple[str, str]:
    raw = text.encode("utf-8", "surrogatepass")
    return base64.b64encode(raw).decode("ascii"), base64.urlsafe_b64encode(raw).decode("ascii")


_SPELLINGS: tuple[Callable[[str], str], ...] = (
    lambda s: _escaped(s, "'"),  # repr(), and str() of a tuple or exception holding it
    lambda s: _escaped(s, '"'),
    lambda s: repr(s.encode("utf-8", "backslashreplace"))[2:-1],  # bytes repr: h11 headers
    lambda s: json.dumps(s)[1:-1],  # an error body that is JSON
    lambda s: quote(s, safe=""),
    lambda s: quote(s),  # "/" kept, as in a URL path
    lambda s: quote_plus(s),  # a query string or form body
)
"""Escapings a message may apply to a secret, and apply again to what it already escaped."""


def _whole_value_spellings(secret: str) -> Iterator[str]:
    """Encodings an echo applies to a whole header value, never nested in one another.

    Of the secret and of ``Bearer <secret>`` (a header value echoed whole): every character
    as a JSON ``\\uXXXX`` escape, every UTF-8 byte as ``%XX`` (case is ignored when
    matching), and base64, standard and URL-safe, with and without padding (also what a
    ``Basic`` header makes of a URL's ``user:password``).
    """
    for text in (secret, f"Bearer {secret}"):
        yield "".join(f"\\u{ord(ch):04x}" for ch in text)
        yield "".join(f"%{byte:02x}" for byte in text.encode("utf-8", "surrogatepass"))
        for encoded in _base64(text):
            yield encoded
            yield encoded.rstrip("=")


_MIN_FRAGMENT = 4
"""The shortest start of a secret's spelling removed where a text was cut: shorter ones are
too common to tell apart from ordinary text, and too short to help anyone guess a key."""


class Redactor:
    """Replaces every spelling of the given secrets in a text by ``[redacted]``.

    Spellings are the raw secret, its ``repr`` (either quote), its bytes ``repr``, JSON
    escaping, percent-encoding (``quote`` with and without ``/``, ``quote_plus``), and each
    of those escaped once more (a ``repr`` of a message that already held a ``repr``); then
    the whole-value encodings of :func:`_whole_value_spellings` (every character or byte
    escaped, base64), each also escaped once. Case is ignored, since servers upper- or
    lower-case escapes (base64 then matches a little more than it must, never less). The
    pattern is built on the first error, not when the provider is made: the normal path
    never pays for it.
    """

    __slots__ = ("_forms", "_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._secrets = tuple(s for s in secrets if s)
        self._pattern: re.Pattern[str] | None = None
        self._forms: tuple[str, ...] = ()

    def __call__(self, text: str) -> str:
        """``text`` with every whole spelling of a secret replaced."""
        if not self._secrets:
            return text
        pattern = self._pattern or self._compile()
        return pattern.sub(REDACTED, text)

    def quote(self, text: str, limit: int, *, cut: bool = False) -> str:
        """Outside text made safe to put in a message: the one way every message quotes it.

        Redacted before it is cut, so a secret that straddles the cut cannot leave a
        fragment; on one line; lone surrogates replaced; at most ``limit`` characters
        (``...`` marks the cut). ``cut`` says ``text`` is itself only the start of a longer
        text (the first bytes of a body): then a trailing start of a secret's spelling, a
        secret cut in half, is redacted too.

        Args:
            text: What the endpoint (or an exception about it) said.
            limit: The most characters to keep.
            cut: ``text`` was cut from something longer before it got here.
        """
        text = self._cut_fragment(self(text)) if cut else self(text)
        text = " ".join(text.split())
        if len(text) > limit:
            text = self._cut_fragment(text[: limit - 3]) + "..."
        return replace_lone_surrogates(text)

    def _cut_fragment(self, text: str) -> str:
        """``text`` with a trailing start (``_MIN_FRAGMENT`` characters or more) of a
        secret's spelling replaced: what is left of a secret where a text was cut."""
        if not self._secrets or len(text) < _MIN_FRAGMENT:
            return text
        if self._pattern is None:
            self._compile()
        longest = max(len(form) for form in self._forms)
        offset = max(0, len(text) - longest)
        tail = text[offset:].lower()
        cut_at = len(tail)
        for form in self._forms:
            head = form[:_MIN_FRAGMENT]
            at = tail.find(head, max(0, len(tail) - len(form) + 1))
            while 0 <= at < cut_at:
                if form.startswith(tail[at:]):
                    cut_at = at
                    break
                at = tail.find(head, at + 1)
        if cut_at == len(tail):
            return text
        return text[: offset + cut_at] + REDACTED

    def _compile(self) -> re.Pattern[str]:
        forms = set(self._secrets)
        for _ in range(2):
            forms |= {spell(form) for form in forms for spell in _SPELLINGS}
        whole = {form for secret in self._secrets for form in _whole_value_spellings(secret)}
        forms |= whole | {spell(form) for form in whole for spell in _SPELLINGS}
        ordered = sorted(forms, key=len, reverse=True)  # the longest spelling wins
        self._forms = tuple(form.lower() for form in ordered)
        self._pattern = re.compile("|".join(re.escape(form) for form in ordered), re.IGNORECASE)
        return self._pattern
