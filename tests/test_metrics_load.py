"""A bounded load on /metrics while subagents run (the full-size run is bench/load_metrics.py).

Loopback only, bounded in count: a server process keeps 200 subagents in flight while 20
clients send 600 scrapes; none may fail and every answer must parse.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from load_metrics import run_load


def test_no_scrape_fails_and_every_scrape_parses_under_load() -> None:
    report = run_load(requests=600, clients=20, subagents=200)
    assert report.failed == 0
    assert report.unparsable == 0
    assert report.distinct_bodies >= 1
    assert report.executions_seen > 0  # the agents really ran while it was scraped
