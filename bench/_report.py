"""The tables and the goal check of a benchmark run, from its results (plain text or Markdown).

Kept apart from the runner so that ``python -m bench --report FILE`` can print a saved run
again, and so the goals of the issue are computed in one place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ("WORKLOADS", "render", "summarize_goals")

WORKLOADS = {
    "W0": ("one agent run, one model call that answers with text", "run"),
    "W1": ("sequential delegation: parent -> one subagent -> parent answers", "parent"),
    "W2": ("one parent reply asks for N subagents at once", "child"),
    "W3": ("Runtime.run_batch of N children (5 at a time)", "child"),
}
SPEED_FACTOR = 20.0
"""W1 to W3 with metrics on: at least this many times faster than the faster peer (issue 12)."""
SCALING_LIMIT = 1.25
"""Cost per child at N=10000 over its cost at N=100."""
RSS_LIMIT_MIB = 150.0
"""Peak RSS at N=10000."""
TELEMETRY_LIMIT_US = 30.0
"""Metrics on against off, per subagent execution."""
REFERENCE_FLOORS = {"anyio_task_spawn": 18.6, "otel_histogram_record_4_attributes": 7.8}
"""Building blocks on the bench machine's quiet day (2026-11-27), the figures of bench/README.md:
how much slower a run's machine was is their ratio, so a µs goal can be read at both speeds."""

Record = dict[str, Any]


def _ok(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if "error" not in r]


def _find(records: Sequence[Record], system: str, workload: str, n: int, telemetry: str) -> Record:
    for r in records:
        if (r["system"], r["workload"], r["n"], r["telemetry"]) == (system, workload, n, telemetry):
            return r
    return {}


def _faster_peer(records: Sequence[Record], workload: str, n: int) -> Record:
    peers = [
        r for r in records if r["system"] != "xzatoma" and r["workload"] == workload and r["n"] == n
    ]
    return min(peers, key=lambda r: r["wall_us"], default={})


def _bound(record: Record) -> str:
    return ">" if record.get("timed_out") else ""


def _sizes(records: Sequence[Record], workload: str) -> list[int]:
    return sorted({r["n"] for r in records if r["workload"] == workload})


def _slowdown(floors: Record) -> float | None:
    """This run's building blocks over the reference day's (their geometric mean)."""
    found = {k: floors.get(k) for k in REFERENCE_FLOORS}
    ratios = [v / REFERENCE_FLOORS[k] for k, v in found.items() if isinstance(v, float)]
    if len(ratios) != len(REFERENCE_FLOORS):
        return None
    return math.prod(ratios) ** (1 / len(ratios))


def summarize_goals(report: Record) -> list[Record]:
    """Each goal of the issue: whether it holds on this run, and the figures behind it."""
    records = _ok(report["results"])
    goals: list[Record] = []

    lines, holds = [], []
    for workload in ("W1", "W2", "W3"):
        for n in _sizes(records, workload):
            xz = _find(records, "xzatoma", workload, n, "metrics")
            peer = _faster_peer(records, workload, n)
            if not xz or not peer:
                continue
            ratio = peer["wall_us"] / xz["wall_us"]
            holds.append(ratio >= SPEED_FACTOR)
            lines.append(
                f"{workload} N={n}: {peer['system']} {_bound(peer)}{ratio:.1f}x slower than "
                f"xzatoma with metrics ({_bound(peer)}{peer['wall_us']:.0f} vs "
                f"{xz['wall_us']:.0f} µs)"
            )
    goals.append(
        {
            "goal": f"W1-W3 at least {SPEED_FACTOR:g}x faster than the faster peer, metrics on",
            "holds": all(holds) if holds else None,
            "detail": lines,
        }
    )

    lines, holds = [], []
    for workload in ("W2", "W3"):
        for telemetry in ("off", "metrics", "tracing"):
            small = _find(records, "xzatoma", workload, 100, telemetry)
            large = _find(records, "xzatoma", workload, 10000, telemetry)
            if not small or not large:
                continue
            ratio = large["wall_us"] / small["wall_us"]
            holds.append(ratio <= SCALING_LIMIT)
            lines.append(
                f"{workload} {telemetry}: {large['wall_us']:.1f} µs at N=10000 / "
                f"{small['wall_us']:.1f} µs at N=100 = {ratio:.2f}"
            )
    goals.append(
        {
            "goal": f"cost per child at N=10000 within {SCALING_LIMIT:g}x of N=100 (xzatoma)",
            "holds": all(holds) if holds else None,
            "detail": lines or ["not measured (N=10000 runs only without --quick)"],
        }
    )

    lines, holds = [], []
    for workload in ("W2", "W3"):
        for telemetry in ("off", "metrics", "tracing"):
            large = _find(records, "xzatoma", workload, 10000, telemetry)
            if large:
                holds.append(large["peak_rss_mib"] <= RSS_LIMIT_MIB)
                lines.append(f"{workload} {telemetry}: {large['peak_rss_mib']:.0f} MiB")
    goals.append(
        {
            "goal": f"peak RSS at N=10000 at most {RSS_LIMIT_MIB:g} MiB (xzatoma)",
            "holds": all(holds) if holds else None,
            "detail": lines or ["not measured (N=10000 runs only without --quick)"],
        }
    )

    lines, holds = [], []
    for workload in ("W1", "W2", "W3"):
        for n in _sizes(records, workload):
            off = _find(records, "xzatoma", workload, n, "off")
            on = _find(records, "xzatoma", workload, n, "metrics")
            if not off or not on:
                continue
            extra = on["wall_us"] - off["wall_us"]
            if workload != "W1":  # W1's unit also holds the parent's own two model calls
                holds.append(extra <= TELEMETRY_LIMIT_US)
            traced = _find(records, "xzatoma", workload, n, "tracing")
            tracing = ""
            if traced:
                tracing = f"; metrics+tracing +{traced['wall_us'] - off['wall_us']:.1f}"
            lines.append(f"{workload} N={n}: metrics +{extra:.1f} µs{tracing}")
    slowdown = _slowdown(report.get("floors") or {})
    if slowdown is not None and lines:
        lines.append(
            f"this machine ran {slowdown:.2f}x as slow as on 2026-11-27 (building blocks): "
            f"the goal there is {TELEMETRY_LIMIT_US * slowdown:.0f} µs here"
        )
    goals.append(
        {
            "goal": f"metrics on cost at most {TELEMETRY_LIMIT_US:g} µs per subagent execution "
            "(judged on W2 and W3)",
            "holds": all(holds) if holds else None,
            "detail": lines,
        }
    )
    return goals


def _row(cells: Sequence[str], widths: Sequence[int], markdown: bool) -> str:
    if markdown:
        return "| " + " | ".join(cells) + " |"
    return "  ".join(
        cell.ljust(width) if i < 3 else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()


def _table(records: Sequence[Record], workload: str, markdown: bool) -> list[str]:
    title, unit = WORKLOADS[workload]
    header = [
        "N",
        "system",
        "telemetry",
        f"µs/{unit} wall",
        f"µs/{unit} CPU",
        "peer ÷ xzatoma",
        "peak RSS MiB",
    ]
    rows = []
    for record in records:
        if record["workload"] != workload:
            continue
        cells = [str(record["n"]), record["system"], record["telemetry"]]
        if "error" in record:
            rows.append([*cells, "error", "", "", record["error"][:60]])
            continue
        bound = _bound(record)
        ratio = ""
        xz = _find(records, "xzatoma", workload, record["n"], "metrics")
        if record["system"] != "xzatoma" and xz and "error" not in xz:
            ratio = f"{bound}{record['wall_us'] / xz['wall_us']:.1f}x"
        rows.append(
            [
                *cells,
                f"{bound}{record['wall_us']:.1f}",
                f"{bound}{record['cpu_us']:.1f}",
                ratio,
                f"{bound}{record['peak_rss_mib']:.0f}",
            ]
        )
    if not rows:
        return []
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"{workload}: {title}" + (" (µs per unit)" if not markdown else "")]
    if markdown:
        lines = [f"**{workload}**: {title}", ""]
    lines.append(_row(header, widths, markdown))
    if markdown:
        lines.append("|" + "|".join("---:" if i >= 3 else "---" for i in range(len(header))) + "|")
    lines += [_row(row, widths, markdown) for row in rows]
    return lines


def render(report: Record, *, markdown: bool = False) -> str:
    """The tables, one per workload, then the goals."""
    records: list[Record] = report["results"]
    out: list[str] = []
    machine = report.get("machine", {})
    out.append(
        f"xzatoma benchmarks ({report.get('mode', 'full')} run, {report.get('date', '?')}): "
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"Python {machine.get('python', '?')}"
    )
    if report.get("peers_error"):
        out.append(f"peers not measured: {report['peers_error'].splitlines()[0]}")
    for workload in WORKLOADS:
        table = _table(records, workload, markdown)
        if table:
            out += ["", *table]
    out += [
        "",
        "peer ÷ xzatoma: a peer's wall time over xzatoma's with metrics on, at the same N;",
        "'>' marks a peer run stopped at its time budget (the figures are lower bounds)",
        "",
    ]
    if markdown:  # one caption line: join the second onto the first
        caption = out.pop(-2)
        out[-2] += " " + caption
    floors = report.get("floors") or {}
    bullet, indent = ("- ", "  - ") if markdown else ("  ", "           ")
    if floors and "error" not in floors:
        out.append("Building blocks (bench/floors.py), µs per operation:")
        out += [f"{bullet}{name.replace('_', ' ')}: {value:.1f}" for name, value in floors.items()]
        out.append("")
    out += ["Goals:", ""] if markdown else ["Goals:"]
    for goal in report.get("goals") or summarize_goals(report):
        state = {True: "MET ", False: "OPEN", None: "n/a "}[goal["holds"]]
        out.append(f"{bullet}[{state.strip() if markdown else state}] {goal['goal']}")
        out += [f"{indent}{line}" for line in goal["detail"]]
    return "\n".join(out)
