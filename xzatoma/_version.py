"""The installed package's version, read once from its metadata."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

__all__ = ("package_version",)


@cache
def package_version() -> str:
    """``xzatoma``'s version, or ``0.0.0`` in a source tree that was never installed."""
    try:
        return version("xzatoma")
    except PackageNotFoundError:
        return "0.0.0"
