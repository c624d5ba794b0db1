"""An MCP stdio server written by hand, line by line of JSON-RPC, for the lifecycle tests: it
misbehaves in ways an SDK-built server cannot (``python tests/_mcp_raw_server.py MODE``).

Modes: ``ok`` (an ``echo`` tool), ``init_error`` (``initialize`` answered with a JSON-RPC
error), ``bad_schema`` (a tool whose ``inputSchema`` is an array's), ``bad_result`` (a call
answered with ``content`` that is no list), ``crash_then_stall STATE FIFO`` (the first start,
which creates ``STATE``, exits mid-call; a later start writes ``starting <pid>`` to ``FIFO``
and never answers, until its stdin closes), ``crash_always`` (exits mid-call, every start).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ()


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(mode: str, more: list[str]) -> None:
    tools: list[dict[str, Any]] = [{"name": "echo", "inputSchema": {"type": "object"}}]
    if mode == "bad_schema":
        tools.append({"name": "weird", "inputSchema": {"type": "array"}})
    if mode == "crash_then_stall":
        state, fifo = more
        if os.path.exists(state):
            with open(fifo, "w") as out:  # blocks until the test reads it
                out.write(f"starting {os.getpid()}\n")
            for _ in sys.stdin:  # never answers; ends when its stdin is closed
                pass
            return
        with open(state, "w"):
            pass
        mode = "crash_always"
    for line in sys.stdin:
        message = json.loads(line)
        ident, method = message.get("id"), message.get("method")
        if method == "initialize":
            if mode == "init_error":
                error = {"code": -32602, "message": "Unsupported protocol version: try 1999-01-01"}
                _send({"jsonrpc": "2.0", "id": ident, "error": error})
                continue
            version = message["params"]["protocolVersion"]
            info = {"name": "raw", "version": "0"}
            result = {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": info}
            _send({"jsonrpc": "2.0", "id": ident, "result": result})
        elif method == "tools/list":
            _send({"jsonrpc": "2.0", "id": ident, "result": {"tools": tools}})
        elif method == "tools/call":
            if mode == "crash_always":
                os._exit(7)
            content: Any = "not a list"
            if mode != "bad_result":
                text = json.dumps(message["params"].get("arguments", {}))
                content = [{"type": "text", "text": text}]
            _send({"jsonrpc": "2.0", "id": ident, "result": {"content": content}})
        elif ident is not None:
            _send({"jsonrpc": "2.0", "id": ident, "result": {}})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
