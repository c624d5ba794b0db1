"""How to install an optional extra, said the same way by every error that needs one.

xzatoma is not on a package index yet, so the install that works is from a checkout (or the
wheel built from one): the hint says that, not ``pip install 'xzatoma[...]'``.
"""

from __future__ import annotations

__all__ = ("install_hint",)


def install_hint(extra: str) -> str:
    """``pip install '.[extra]'`` from a checkout of xzatoma, as an error message says it."""
    return f"pip install '.[{extra}]' in a checkout of xzatoma (or the built wheel's [{extra}])"
