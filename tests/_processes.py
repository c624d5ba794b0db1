"""The processes a test left behind, read from ``/proc`` (Linux): who is whose child, and
which MCP servers the suite started are still alive."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ("MCP_MARKERS", "boot_ticks", "children", "mcp_servers_started_since")

MCP_MARKERS = ("mcp-server-time", "mcp_server_time", "_mcp_test_server.py", "_mcp_raw_server.py")
"""What the command line of an MCP server the suite starts contains."""


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, starttime in clock ticks since boot)`` of a live (not zombie) process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(of: int | None = None) -> set[int]:
    """The live children of ``of`` (default: this process)."""
    parent = os.getpid() if of is None else of
    found = set()
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and stat[0] == parent:
            found.add(pid)
    return found


def boot_ticks() -> int:
    """Now, in the clock ticks ``/proc/PID/stat`` counts start times in."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return int(uptime * os.sysconf("SC_CLK_TCK"))


def mcp_servers_started_since(ticks: int) -> dict[int, str]:
    """MCP servers (by :data:`MCP_MARKERS`) alive now that started at or after ``ticks``:
    this process's children, and orphans of a child that died (adopted by init)."""
    left = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is None or pid == os.getpid() or stat[1] < ticks:
            continue
        line = _cmdline(pid)
        if any(marker in line for marker in MCP_MARKERS):
            left[pid] = line
    return left
