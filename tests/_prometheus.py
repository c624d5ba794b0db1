"""A real Prometheus for the tests: start one on loopback, query it, read values by depth.

Debian's ``prometheus`` package is installed by ``.ci/ensure-prometheus`` (``make test``);
where it is missing, :func:`prometheus_server` skips with the reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

__all__ = ("INSTALL", "by_depth", "free_port", "prometheus_server", "query", "stop")

INSTALL = (
    "install Debian's 'prometheus' package (apt-get install --no-install-recommends "
    "prometheus; `make test` does it through .ci/ensure-prometheus)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def query(base: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def by_depth(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"]["depth"]: float(r["value"][1]) for r in result}


@contextmanager
def prometheus_server(
    folder: Path, scrape_configs: str, features: Sequence[str] = ()
) -> Iterator[str]:
    """A Prometheus scraping every second with ``scrape_configs`` (YAML, the list under the
    key), with the ``--enable-feature`` flags ``features`` (``exemplar-storage``); yields
    its URL. Its data and log are kept in ``folder``."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(f"the prometheus server is not installed: {INSTALL}")
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n" + textwrap.indent(textwrap.dedent(scrape_configs).strip(), "  ") + "\n"
    )
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            *(f"--enable-feature={feature}" for feature in features),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)
        log.close()
