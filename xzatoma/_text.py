"""Text from outside made encodable: lone surrogates replaced, once, wherever text enters.

A JSON ``\\ud800`` escape (from an endpoint, from a model's tool call) decodes to a Python
string holding a lone surrogate, which ``str.encode("utf-8")`` refuses: the next request, a
print or a log line would fail on it. The provider, the redactor and the spawner all replace
them with U+FFFD through :func:`replace_lone_surrogates`.
"""

from __future__ import annotations

import re

__all__ = ("replace_lone_surrogates",)

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""Any surrogate in a Python string is a lone one (JSON's valid pairs decode to one code point)."""
_REPLACEMENT = "\ufffd"


def replace_lone_surrogates(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD; ASCII text is returned as is."""
    if text.isascii() or _LONE_SURROGATE.search(text) is None:
        return text
    return _LONE_SURROGATE.sub(_REPLACEMENT, text)
