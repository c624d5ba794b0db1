"""The command line's OTLP push: when the standard ``OTEL_EXPORTER_OTLP_*`` variables name a
collector, ``run``, ``batch`` and ``demo`` push their metrics and spans to it, and send what
is left before the process exits, however the command ends (an answer, an error, Ctrl-C, an
exception).

The SDK's exporters read the variables themselves (endpoints, headers, timeout, compression,
certificates, temporality); this module only decides whether to push each signal, refuses
what could never work (an endpoint that is not an http(s) URL, another protocol than
``http/protobuf``, the ``otlp`` extra missing) as one line and exit code 2, and shows the
exporters' complaints as ``xzatoma: warning:`` lines. The push's meter provider also carries
a Prometheus reader (when that extra is installed), so ``--metrics-port`` serves the same
metrics: one provider, both readers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

from ._terminal import one_line
from .errors import ConfigError
from .providers._urls import shown_url, validate_base_url

if TYPE_CHECKING:
    from .telemetry import OtlpExport

__all__ = ("COMMANDS", "ENDPOINT", "otlp_push", "pushed_signals")

COMMANDS: Final = frozenset({"run", "batch", "demo"})
"""The commands that run agents, and so have telemetry to push."""

ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
_SIGNALS: Final = ("metrics", "traces")
_HTTP_PROTOBUF: Final = "http/protobuf"
_SILENT: Final = logging.CRITICAL + 1


def _signal_variable(signal: str, what: str) -> str:
    return f"OTEL_EXPORTER_OTLP_{signal.upper()}_{what}"


def pushed_signals(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Each signal to push, with the variable that asked for it: one whose own endpoint
    (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or the common one is set, unless
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_{METRICS,TRACES}_EXPORTER=none`` turns it off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return {}
    wanted: dict[str, str] = {}
    for signal in _SIGNALS:
        if environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower() == "none":
            continue
        own = _signal_variable(signal, "ENDPOINT")
        for variable in (own, ENDPOINT):
            if environ.get(variable):
                wanted[signal] = variable
                break
    return wanted


def _check(wanted: Mapping[str, str], environ: Mapping[str, str]) -> None:
    """Refuse, naming the variable, an endpoint or protocol no push could use."""
    for variable in sorted(set(wanted.values())):
        validate_base_url(environ[variable], variable)
    for signal in wanted:
        for variable in (_signal_variable(signal, "PROTOCOL"), "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = environ.get(variable, "").strip()
            if protocol:
                if protocol != _HTTP_PROTOBUF:
                    raise ConfigError(
                        f"{variable} is {one_line(protocol)!r}, but xzatoma pushes OTLP over "
                        f"HTTP only: set it to {_HTTP_PROTOBUF} (or unset it), with the "
                        "collector's OTLP/HTTP endpoint (port 4318 by convention)"
                    )
                break  # the signal's own variable wins over the common one


def _verbosity(args: argparse.Namespace) -> int:
    """``-q`` -1, none 0, ``-v`` 1, ``-vv`` 2 (the parser's count)."""
    verbosity = getattr(args, "verbosity", 0)
    return verbosity if isinstance(verbosity, int) else 0


class _Complaints(logging.Handler):
    """The SDK's and exporters' log records, as one escaped ``xzatoma: warning:`` line each
    on stderr (a collector's answer is text from the network), naming where the exporter
    that logged it pushes (its logger is ``...trace_exporter`` or ``...metric_exporter``)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.urls: dict[str, str] = {}
        """A part of a logger's name (``trace``, ``metric``) -> the URL it pushes to."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            where = next((url for part, url in self.urls.items() if part in record.name), None)
            to = f" to {shown_url(where)}" if where else ""
            message = one_line(record.getMessage())
            print(f"xzatoma: warning: OTLP push{to}: {message}", file=sys.stderr)
        except Exception:  # a closed stderr: nothing to tell it to
            self.handleError(record)


@contextlib.contextmanager
def _complaints_shown(verbosity: int) -> Iterator[_Complaints]:
    """While the block runs, the ``opentelemetry`` loggers' errors (and warnings, such as a
    retry, with ``-v``) go to stderr as our lines, not Python's bare last resort; ``-q``
    keeps them all quiet (a push that fails never fails the command)."""
    logger = logging.getLogger("opentelemetry")
    level = logging.WARNING if verbosity > 0 else logging.ERROR if verbosity == 0 else _SILENT
    handler = _Complaints(level)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


@contextlib.contextmanager
def otlp_push(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> Iterator[OtlpExport | None]:
    """Push the command's metrics and spans over OTLP while the block runs, when the
    environment names a collector (see :func:`pushed_signals`); flush and shut down on the
    way out, whatever the way. Nothing happens for other commands or without the variables.

    Raises:
        ConfigError: An endpoint is not an http(s) URL, a protocol is not http/protobuf, or
            the ``otlp`` extra is not installed (the message says what to install).
    """
    wanted = pushed_signals(environ) if getattr(args, "command", None) in COMMANDS else {}
    if not wanted:
        yield None
        return
    _check(wanted, environ)
    from .telemetry import _otlp

    _otlp.require_extra(f"{min(wanted.values())} is set, but pushing telemetry to it")
    verbosity = _verbosity(args)
    with _complaints_shown(verbosity) as complaints:
        export = _otlp.start_export(
            endpoint=None,
            metrics="metrics" in wanted,
            traces="traces" in wanted,
            metric_readers=_otlp.prometheus_readers() if "metrics" in wanted else (),
        )
        for part, url in (("trace", export.traces_url), ("metric", export.metrics_url)):
            if url is not None:
                complaints.urls[part] = url
        try:
            yield export
        finally:
            seconds = export.timeout + _otlp.MARGIN
            if not export.shutdown(seconds) and verbosity >= 0:  # the wait, said in the line
                print(
                    f"xzatoma: warning: the OTLP push did not finish within {seconds:g} s; "
                    "metrics or spans not sent by then are lost",
                    file=sys.stderr,
                )
