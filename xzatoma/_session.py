"""Session ids: what names one runtime's tree on its spans, its baggage and its statistics."""

from __future__ import annotations

import uuid
from typing import Final

from .errors import ConfigError

__all__ = ("MAX_SESSION_ID", "new_session_id", "session_id_or_new")

MAX_SESSION_ID: Final = 128
"""Characters a session id may have: it travels in every span and in W3C baggage headers
(8,192 bytes for all entries together), so it is kept short."""


def new_session_id() -> str:
    """A fresh random session id (a UUID4, ``"8c1f...-..."``)."""
    return str(uuid.uuid4())


def session_id_or_new(session_id: object) -> str:
    """``session_id`` checked, or a new one for ``None``.

    Raises:
        ConfigError: Not a string, empty, longer than :data:`MAX_SESSION_ID`, with
            characters that are not printable (a control character would break a log line
            or a header), or with a space at either end.
    """
    if session_id is None:
        return new_session_id()
    if not isinstance(session_id, str):
        raise ConfigError(f"session_id must be a string, got {type(session_id).__name__}")
    if not session_id.strip():
        raise ConfigError("session_id must not be empty (leave it out for a generated one)")
    if len(session_id) > MAX_SESSION_ID:
        raise ConfigError(
            f"session_id has {len(session_id)} characters; at most {MAX_SESSION_ID} are allowed"
        )
    if not session_id.isprintable():
        raise ConfigError(f"session_id {session_id!r} has characters that are not printable")
    if session_id != session_id.strip():
        # W3C baggage drops them on the way to another process: the ids would differ there.
        raise ConfigError(f"session_id {session_id!r} starts or ends with a space")
    return session_id
