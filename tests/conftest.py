"""Shared test settings: async tests run on asyncio through anyio's pytest plugin.

A test that involves time opts into virtual time with ``@on_virtual_time`` (from
``tests/_clock.py``): it then runs twice, on trio's autojumping ``MockClock`` and on asyncio's
:class:`~_clock.VirtualTimeLoop`, each made fresh for the test, so its timeouts fire at once
and at the same instant on every run, whatever the machine's load.
"""

from __future__ import annotations

import pytest
from _clock import Backend, backend_options


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[Backend, dict[str, object]]:
    backend: Backend | None = getattr(request, "param", None)
    if backend is None:
        return "asyncio"
    return backend, backend_options(backend)
