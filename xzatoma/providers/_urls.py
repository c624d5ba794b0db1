"""The base URL at the boundary: refused up front if no request could use it, shown without secrets.

Everything httpx or h11 would choke on later (a port that is not 1..65535 or not digits, an
empty or malformed host, a space or control character anywhere) is refused here, once, with a
one-line :class:`~xzatoma.errors.ConfigError`, so no request ever raises ``httpx.InvalidURL``
and no user sees a traceback for a typo.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import httpx

from ..errors import ConfigError
from ._secrets import REDACTED, Redactor

__all__ = ("chat_completions_url", "server_of", "shown_url", "url_secrets", "validate_base_url")

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.IGNORECASE)
"""One DNS label as resolvers accept it (underscores too: Docker and Compose service names)."""
_MAX_HOST = 253
_MAX_QUOTED = 80
"""How much of httpx's own complaint a message quotes: it may echo part of the URL."""


def validate_base_url(url: str, what: str = "base_url") -> None:
    """Refuse a base URL no request could be sent to, naming ``what`` (never a traceback later).

    Credentials in the URL (``http://user:pass@host/v1``) are fine; they never appear in a
    message. A query string (``?api-version=...``) is kept on every request.

    Raises:
        ConfigError: The URL is not http(s), holds a space or control character, has no host
            or a malformed one, or a port that is not digits in 1..65535; the message starts
            with ``what``.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{what} must start with http:// or https://")
    if " " in url or not url.isprintable():
        position = next(i for i, ch in enumerate(url) if ch == " " or not ch.isprintable())
        raise ConfigError(
            f"{what} has a space or control character at position {position}; "
            "a URL holds neither (percent-encode it, e.g. %20)"
        )
    _check_port(_authority(url).rpartition("@")[2], what)
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decodes IDNA labels: a malformed "xn--" label fails only here
        httpx.URL(chat_completions_url(url))
    except (httpx.InvalidURL, ValueError) as exc:  # idna.IDNAError is a ValueError
        said = Redactor(url_secrets(url)).quote(str(exc), _MAX_QUOTED)  # redacted, then cut
        raise ConfigError(f"{what} is not a valid URL: {said}") from None
    if not host:
        raise ConfigError(f"{what} has no host name (e.g. http://127.0.0.1:8080/v1)")
    if b":" not in parsed.raw_host and not _is_host_name(parsed.raw_host.decode("ascii")):
        raise ConfigError(
            f"{what} has a malformed host name (labels of letters, digits, '-' or '_', "
            "separated by single dots), e.g. http://127.0.0.1:8080/v1"
        )


def _authority(url: str) -> str:
    start = url.index("://") + 3
    end = next((i for i in range(start, len(url)) if url[i] in "/?#"), len(url))
    return url[start:end]


def _check_port(host_and_port: str, what: str) -> None:
    if host_and_port.startswith("["):  # an IPv6 literal: the port, if any, follows "]"
        port = host_and_port.partition("]")[2].removeprefix(":")
    else:
        port = host_and_port.rpartition(":")[2] if ":" in host_and_port else ""
    if not port:
        return
    if not (port.isascii() and port.isdigit()):
        raise ConfigError(f"{what} has a port that is not a number; write it in digits 1..65535")
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"{what} has port {int(port)}, outside 1..65535")


def _is_host_name(host: str) -> bool:
    name = host.removesuffix(".")
    return len(name) <= _MAX_HOST and all(_LABEL.fullmatch(label) for label in name.split("."))


def chat_completions_url(base_url: str) -> str:
    """``{base_url}/chat/completions``: joined to the path, any query string kept after it."""
    cut = next((i for i, ch in enumerate(base_url) if ch in "?#"), len(base_url))
    return f"{base_url[:cut].rstrip('/')}/chat/completions{base_url[cut:]}"


def shown_url(url: str) -> str:
    """The URL as messages and ``repr`` show it: any ``user:password@`` replaced by a marker.

    Some services take a token as the user name, so the whole user part goes, not only the
    password.
    """
    authority = _authority(url)
    if "@" not in authority:
        return url
    start = url.index("://") + 3
    host = authority.rpartition("@")[2]
    return f"{url[:start]}{REDACTED}@{host}{url[start + len(authority) :]}"


def server_of(url: str) -> tuple[str, int]:
    """The host and port a (validated) URL reaches: the scheme's port when none is written;
    an IPv6 literal without its brackets. Never the ``user:password@`` part."""
    host_and_port = _authority(url).rpartition("@")[2]
    if host_and_port.startswith("["):
        host, _, rest = host_and_port[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = host_and_port.partition(":")
    default = 443 if url[: url.index("://")].lower() == "https" else 80
    return host.lower(), int(port) if port else default


def url_secrets(url: str) -> tuple[str, ...]:
    """The user name and password a URL carries, raw and percent-decoded, for redaction.

    Also ``user:password`` whole, raw and decoded: httpx sends it base64-encoded as
    ``Authorization: Basic ...``, which an endpoint may echo back.
    """
    userinfo, at, _ = _authority(url).rpartition("@")
    if not at:
        return ()
    parts = [part for part in userinfo.split(":", 1) if part]
    user, _, password = userinfo.partition(":")
    basic = f"{unquote(user)}:{unquote(password)}"  # as httpx builds it, "user:" included
    return (*parts, *(unquote(part) for part in parts), userinfo, basic)
