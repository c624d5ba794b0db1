"""``python bench/http_bench.py``: xzatoma, its peers and bare clients over real HTTP.

A fast OpenAI-compatible server (``http_server.py``, uvloop and httptools, in its own process
on 127.0.0.1) answers every chat request after 50 ms. Each system runs three batches of
one-call tasks against it: A, 1,000 at once; B, 1,000 100 at a time; C, 10,000 1,000 at a
time. Each (system, workload) runs in a fresh subprocess (``http_workloads.py`` for xzatoma
and the bare clients, ``http_peers.py`` for pydantic-ai and the Agents SDK), one at a time,
in interleaved rounds with the order of the systems rotated, and the fastest pass of each is
reported. A capacity probe (bare keep-alive clients at latency 0, before and after the
rounds; the better counts) shows what the server can take. Results go to
``bench/results/http-latest.json`` (``--quick``: ``http-quick.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from http_workloads import ServerProcess, run_probe  # noqa: E402 - the script's own folder

from bench.__main__ import PEERS_VENV, ensure_peers, machine  # noqa: E402 - needs the path

RESULTS = HERE / "results"
PEER_PYTHON = str(PEERS_VENV / "bin" / "python")
SYSTEMS = {  # name: (script, interpreter)
    "xzatoma": ("http_workloads.py", sys.executable),
    "httpx": ("http_workloads.py", sys.executable),
    "aiohttp": ("http_workloads.py", PEER_PYTHON),
    "pydantic-ai": ("http_peers.py", PEER_PYTHON),
    "openai-agents": ("http_peers.py", PEER_PYTHON),
}
FLOORS = ("httpx", "aiohttp")
PEERS = ("pydantic-ai", "openai-agents")
LATENCY = 0.05
WORKLOADS = {  # name: (N, concurrency)
    "full": {"A": (1000, 1000), "B": (1000, 100), "C": (10000, 1000)},
    "quick": {"A": (200, 200), "B": (200, 20), "C": (2000, 200)},
}
TITLES = {"A": "all at once", "B": "a tenth at a time", "C": "ten times N, a tenth at a time"}
ROUNDS = {"full": 2, "quick": 1}
BUDGET = {"full": {"A": 60.0, "B": 60.0, "C": 120.0}, "quick": {"A": 30.0, "B": 30.0, "C": 60.0}}
"""Seconds the warm-up and the timed batch may each take; past it, lower bounds (``>``)."""
PROBE: dict[str, Any] = {"processes": 2, "connections": 50, "seconds": 3.0}
"""The capacity probe: this many client processes of this many connections, for so long."""

Record = dict[str, Any]


def run_one(system: str, workload: str, mode: str, server: ServerProcess) -> Record:
    """One (system, workload) in a fresh subprocess: its JSON line, or why it has none."""
    n, concurrency = WORKLOADS[mode][workload]
    budget = BUDGET[mode][workload]
    script, python = SYSTEMS[system]
    command = [
        python,
        str(HERE / script),
        *("--system", system, "--base-url", server.base_url),
        *("--control-url", server.control_url, "--n", str(n)),
        *("--concurrency", str(concurrency), "--budget", str(budget)),
    ]
    base = {"system": system, "workload": workload, "n": n, "concurrency": concurrency}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=2 * budget + 60, check=False
        )
    except subprocess.TimeoutExpired:
        return {**base, "error": "the subprocess hung and was killed"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {**base, "error": f"exit {done.returncode}: " + " | ".join(tail)}
    return {**base, **json.loads(lines[-1])}


def plan(mode: str, only: Sequence[str], peers_at_c: bool) -> list[tuple[str, list[str]]]:
    """(workload, systems) in the order of the first round."""
    chosen = [name for name in SYSTEMS if not only or name in only]
    return [
        (workload, [s for s in chosen if s not in PEERS or workload != "C" or peers_at_c])
        for workload in WORKLOADS[mode]
    ]


def measure(mode: str, runs: list[tuple[str, list[str]]], rounds: int) -> list[Record]:
    """Every run of every round; one that timed out or failed is not run again."""
    server = ServerProcess(PEER_PYTHON, LATENCY)
    passes: list[Record] = []
    given_up: set[tuple[str, str]] = set()
    try:
        for round_number in range(rounds):
            for index, (workload, systems) in enumerate(runs):
                shift = (round_number + index) % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    if (system, workload) in given_up:
                        continue
                    began = time.monotonic()
                    record = {**run_one(system, workload, mode, server), "round": round_number}
                    passes.append(record)
                    if "error" in record or record.get("timed_out"):
                        given_up.add((system, workload))
                    _progress(record, time.monotonic() - began)
    finally:
        server.stop()
    return passes


def _progress(record: Record, seconds: float) -> None:
    outcome = record.get("error") or f"{_bound(record)}{record['wall_us']:.0f} µs/run"
    print(
        f"http bench: round {record['round'] + 1} {record['workload']} {record['system']}: "
        f"{outcome} ({seconds:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def best_runs(passes: list[Record]) -> list[Record]:
    """Per (workload, system): the pass with the least wall time (finished ones first)."""
    best: dict[tuple[str, str], Record] = {}
    for record in passes:
        key = (record["workload"], record["system"])
        if "error" in record:
            best.setdefault(key, record)
            continue
        rank = (bool(record.get("timed_out")), record["wall_us"])
        held = best.get(key)
        if held is None or "error" in held or rank < (bool(held.get("timed_out")), held["wall_us"]):
            best[key] = record
    for (workload, system), record in best.items():
        same = [p for p in passes if (p["workload"], p["system"]) == (workload, system)]
        record["passes_wall_us"] = [round(p["wall_us"], 1) for p in same if "wall_us" in p]
    return list(best.values())


def physical_us(record: Record) -> float:
    """The least wall time per run any client could take: ceil(N / C) waves of the latency."""
    return math.ceil(record["n"] / record["concurrency"]) * LATENCY / record["n"] * 1e6


def _bound(record: Record) -> str:
    return ">" if record.get("timed_out") else ""


def _ok(records: list[Record], workload: str, systems: Sequence[str]) -> list[Record]:
    return [
        r
        for r in records
        if r["workload"] == workload and r["system"] in systems and "error" not in r
    ]


def best_bare(records: list[Record], workload: str) -> Record | None:
    floors = [r for r in _ok(records, workload, FLOORS) if not r.get("timed_out")]
    return min(floors, key=lambda r: r["wall_us"], default=None)


def faster_peer(records: list[Record], workload: str) -> Record | None:
    return min(_ok(records, workload, PEERS), key=lambda r: r["wall_us"], default=None)


def find(records: list[Record], workload: str, system: str) -> Record | None:
    return next(iter(_ok(records, workload, (system,))), None)


COLUMNS = (
    *("system", "µs/run wall", "µs/run CPU", "÷ best bare", "÷ physical limit", "peer ÷ xzatoma"),
    *("peak RSS MiB", "max in flight", "new conns warm-up/timed", "server µs/req", "server busy"),
)


def _cells(record: Record, records: list[Record]) -> list[str]:
    """One table row: the run's figures and its ratios to the others of its workload."""
    bound, wall, workload = _bound(record), record["wall_us"], record["workload"]
    bare, xz = best_bare(records, workload), find(records, workload, "xzatoma")
    peer_ratio = ""
    if record["system"] in PEERS and xz:
        mark = {(True, False): ">", (False, True): "<"}.get(
            (bool(record.get("timed_out")), bool(xz.get("timed_out"))), ""
        )
        peer_ratio = "?" if record.get("timed_out") and xz.get("timed_out") else mark
        peer_ratio += f"{wall / xz['wall_us']:.1f}x"
    server, warmup = record.get("server") or {}, record.get("warmup") or {}
    requests, cpu = server.get("requests") or 0, server.get("cpu_s", 0.0)
    wall_s = record.get("wall_s") or server.get("wall_s") or 1.0
    return [
        record["system"],
        f"{bound}{wall:,.0f}",
        f"{bound}{record['cpu_us']:,.0f}",
        f"{bound}{wall / bare['wall_us']:.2f}x" if bare else "",
        f"{bound}{wall / physical_us(record):.1f}x",
        peer_ratio,
        f"{record['peak_rss_mib']:.0f}",
        str(server.get("max_in_flight", "?")),
        f"{warmup.get('connections_opened', '?')} / {server.get('connections_opened', '?')}",
        f"{cpu / requests * 1e6:.0f}" if requests else "",
        f"{cpu / wall_s:.0%}",
    ]


def _table(records: list[Record], workload: str, markdown: bool) -> list[str]:
    rows = [r for r in records if r["workload"] == workload]
    if not rows:
        return []
    n, concurrency = rows[0]["n"], rows[0]["concurrency"]
    limit = physical_us(rows[0])
    title = f"{workload}: N={n:,}, {concurrency:,} at a time ({TITLES[workload]}); "
    title += f"physical limit {limit:,.0f} µs/run"
    cells = [_cells(r, records) for r in rows if "error" not in r]
    errors = [f"{r['system']}: {r['error']}" for r in rows if "error" in r]
    widths = [max(len(row[i]) for row in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))]

    def line(row: Sequence[str]) -> str:
        if markdown:
            return "| " + " | ".join(row) + " |"
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    lines = [f"**{title}**", ""] if markdown else [title]
    lines.append(line(COLUMNS))
    if markdown:
        lines.append("|---|" + "---:|" * (len(COLUMNS) - 1))
    return lines + [line(row) for row in cells] + [f"error: {e}" for e in errors]


def render(report: Record, *, markdown: bool = False) -> str:
    """The probe, one table per workload, then the goals."""
    records: list[Record] = report["results"]
    machine_facts, capacity = report.get("machine", {}), report.get("probe") or {}
    out = [
        f"xzatoma over HTTP ({report.get('mode', 'full')} run, {report.get('date', '?')}, "
        f"{report.get('duration_s', 0):.0f} s): {machine_facts.get('cpu', '?')}, "
        f"{machine_facts.get('cores', '?')} cores, load average "
        f"{machine_facts.get('load_average_at_start', ['?'])[0]} at the start, "
        f"{machine_facts.get('load_average_at_end', ['?'])[0]} at the end; "
        f"server latency {report.get('latency_s', LATENCY) * 1000:.0f} ms",
    ]
    if capacity:
        out.append(
            f"Server capacity probe (latency 0, {capacity['processes']} client processes of "
            f"{capacity['connections']} keep-alive connections, {capacity['seconds']:g} s): "
            f"{capacity['requests_per_s']:,.0f} requests/s, server CPU "
            f"{capacity['server_cpu_us_per_request']:.0f} µs/request, busy "
            f"{capacity['server_busy']:.0%}"
        )
    for workload in TITLES:
        out += ["", *_table(records, workload, markdown)]
    out += [
        "",
        "µs/run: the timed batch's wall (CPU) time over N; '>' a run stopped at its budget "
        f"({', '.join(f'{w} {s:g} s' for w, s in report.get('budget_s', {}).items())}): lower "
        "bounds. new conns: opened by the warm-up (200 tasks) / by the timed batch. server "
        "busy: the server's CPU time over the batch's wall time.",
        "",
    ]
    bullet, indent = ("- ", "  - ") if markdown else ("  ", "         ")
    out += ["Goals:", ""] if markdown else ["Goals:"]
    for goal in report.get("goals") or summarize_goals(report):
        state = {True: "MET", False: "OPEN", None: "n/a"}[goal["holds"]]
        out.append(f"{bullet}[{state}] {goal['goal']}")
        out += [f"{indent}{line}" for line in goal["detail"]]
    return "\n".join(out)


def _goal(goal: str, checks: list[tuple[bool, str]], missing: str = "not measured") -> Record:
    holds = all(ok for ok, _ in checks) if checks else None
    return {"goal": goal, "holds": holds, "detail": [text for _, text in checks] or [missing]}


def summarize_goals(report: Record) -> list[Record]:
    """The issue's acceptance, judged on this run; then the bench's own check of its server."""
    records: list[Record] = report["results"]
    rows = {w: find(records, w, "xzatoma") for w in TITLES}
    bare = {w: best_bare(records, w) for w in TITLES}
    c_checks = []
    if (c_row := rows.get("C")) and (c_bare := bare.get("C")):
        ratio, done = c_row["wall_us"] / c_bare["wall_us"], not c_row.get("timed_out")
        c_checks.append(
            (
                done and ratio <= 1.5,
                f"C {'finished' if done else 'stopped at its budget'}: {_bound(c_row)}"
                f"{c_row['wall_us']:,.0f} µs vs {c_bare['system']} {c_bare['wall_us']:,.0f} µs "
                f"= {_bound(c_row)}{ratio:.2f}x",
            )
        )
    bare_checks, peer_checks, rss_checks, limit_checks = [], [], [], []
    for workload, row in rows.items():
        if row is None:
            continue
        floor, peer, b = bare[workload], faster_peer(records, workload), _bound(row)
        if floor:
            ratio = row["wall_us"] / floor["wall_us"]
            bare_checks.append(
                (not b and ratio <= 1.3, f"{workload}: {b}{ratio:.2f}x {floor['system']}")
            )
        if peer:
            ratio = peer["wall_us"] / row["wall_us"]
            sure = not b or bool(peer.get("timed_out"))
            peer_checks.append(
                (
                    not b and ratio >= 2,
                    f"{workload}: {peer['system']} {'' if sure else '<'}"
                    f"{ratio:.2f}x xzatoma's wall time",
                )
            )
        if workload == "B":
            ratio = row["wall_us"] / physical_us(row)
            limit_checks.append(
                (not b and ratio <= 2, f"B: {b}{ratio:.1f}x {physical_us(row):.0f} µs")
            )
        if workload == "C":
            rss_checks.append((row["peak_rss_mib"] <= 200, f"C: {row['peak_rss_mib']:.0f} MiB"))
    return [
        _goal("C finishes, within 1.5x of the best bare client (xzatoma)", c_checks),
        _goal("every xzatoma row within 1.3x of the best bare client", bare_checks),
        _goal("every xzatoma row at least 2x faster than the faster peer", peer_checks),
        _goal("B within 2x of the physical limit (xzatoma)", limit_checks),
        _goal("peak RSS at C at most 200 MiB (xzatoma)", rss_checks),
        _goal("bench: the server takes at least 10x the fastest row's rate", _server(report)),
    ]


def _server(report: Record) -> list[tuple[bool, str]]:
    """The probe's rate against the requests per second of the fastest row of each workload."""
    capacity, checks = report.get("probe") or {}, []
    for workload in TITLES:
        rows = _ok(report["results"], workload, SYSTEMS)
        if capacity and (fastest := min(rows, key=lambda r: r["wall_us"], default=None)):
            rate = 1e6 / fastest["wall_us"]
            ratio = capacity["requests_per_s"] / rate
            text = f"{workload}: {fastest['system']} {rate:,.0f} requests/s, the probe {ratio:.1f}x"
            checks.append((ratio >= 10, text))
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller N, one round: a smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default: 2, quick: 1)")
    parser.add_argument("--only", choices=tuple(SYSTEMS), action="append", help="repeatable")
    parser.add_argument("--peers-at-c", action="store_true", help="run the peers at C too")
    parser.add_argument("--output", type=Path, help="where to write the JSON results")
    parser.add_argument("--report", type=Path, metavar="JSON", help="print a saved run")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(render(json.loads(args.report.read_text()), markdown=args.markdown))
        return 0

    mode = "quick" if args.quick else "full"
    started, load_at_start = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
    peers_error = ensure_peers()
    if peers_error is not None:
        print(f"http bench: skipped: the server needs {PEERS_VENV} (uvloop, httptools).")
        print(peers_error)
        return 0
    probes = [run_probe(PEER_PYTHON, **PROBE)]
    print(f"http bench: probe {probes[0]['requests_per_s']:.0f} requests/s", file=sys.stderr)
    runs = plan(mode, args.only or (), args.peers_at_c)
    passes = measure(mode, runs, args.rounds or ROUNDS[mode])
    probes.append(run_probe(PEER_PYTHON, **PROBE))  # the machine is shared: once more, later
    report: Record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "command": "python bench/http_bench.py" + (" --quick" if args.quick else ""),
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "latency_s": LATENCY,
        "budget_s": BUDGET[mode],
        "probe": max(probes, key=lambda probe: probe["requests_per_s"]),
        "probes": probes,
        "results": best_runs(passes),
        "passes": passes,
    }
    report["goals"] = summarize_goals(report)
    report["duration_s"] = round(time.monotonic() - started, 1)
    output = args.output or RESULTS / ("http-quick.json" if args.quick else "http-latest.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".tmp").write_text(json.dumps(report, indent=1) + "\n")
    output.with_suffix(".tmp").replace(output)
    print(render(report, markdown=args.markdown))
    print(f"\nhttp bench: results written to {output} ({report['duration_s']:.0f} s in all)")
    return 1 if any("error" in record for record in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
