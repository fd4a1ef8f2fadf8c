"""What the ``denali`` subcommands share: exit statuses, one-line usage errors, value parsers."""

from __future__ import annotations

import argparse
import io
import logging
import sys
from typing import Final, NoReturn

EXIT_FAULT: Final = 125
"""A guest faulted or a kernel error stopped a VM."""
EXIT_INTERRUPTED: Final = 130
"""Ctrl-C or SIGTERM, after a clean shutdown."""
EXIT_USAGE: Final = 2
"""A usage or configuration error: a bad value on the command line, or a file it names
that is missing, of the wrong kind, or damaged."""
EXIT_FAILED: Final = 1
"""The host failed while doing what was asked (an I/O error), or a bug (internal error)."""


def whole_line_stderr() -> None:
    """Make each line written to stderr leave in one write. Python's stderr writes
    through, so ``print`` sends a line's text and its newline as two writes; the kernels
    of a host share one stderr, and their lines then interleave mid-line ("... VM 1
    listening on ...:33491denali: gdb: VM 2 ..."). Line-buffered without write-through,
    a line goes out whole at its newline (atomic on a pipe up to PIPE_BUF bytes)."""
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(write_through=False, line_buffering=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, ``denali: MESSAGE (see 'PROG -h')``, and exit 2;
    its subparsers are of the same class. ``-h`` prints the usage as usual."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"denali: {message} (see '{self.prog} -h')\n")


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (HOST may be empty: 127.0.0.1) as (host, port); the port is 1-65535."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port from 1 to 65535")
    return host.strip("[]") or "127.0.0.1", int(port)


def host_port_any(text: str) -> tuple[str, int]:
    """Like ``host_port``, and port 0 means any free port."""
    host, colon, port = text.rpartition(":")
    if colon and port == "0":
        return host.strip("[]") or "127.0.0.1", 0
    return host_port(text)


def positive_float(text: str) -> float:
    """A number of seconds above 0 (and finite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def log_options(top: bool) -> ArgumentParser:
    """A parent parser with ``-v``/``-q``/``--log-level``, accepted before the subcommand
    (``top``: it holds the defaults) and after it (``top`` False: absent unless given)."""
    keep = {} if top else {"default": argparse.SUPPRESS}
    p = ArgumentParser(add_help=False)
    g = p.add_argument_group("logging (to stderr)")
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="more: -v info, -vv debug (with tracebacks)",
        **({"default": 0} if top else keep),
    )
    g.add_argument(
        "-q", "--quiet", action="store_true", help="errors only", **({"default": False} if top else keep)
    )
    g.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"exactly this level ({', '.join(LOG_LEVELS)}; default warning)",
        **({"default": None} if top else keep),
    )
    return p


class _Formatter(logging.Formatter):
    """``denali: LEVEL: LOGGER: MESSAGE``; tracebacks only when debugging."""

    def __init__(self, tracebacks: bool) -> None:
        super().__init__("denali: %(levelname)s: %(name)s: %(message)s")
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        fields = {**record.__dict__, "levelname": record.levelname.lower()}
        if not self.tracebacks:
            fields.update(exc_info=None, exc_text=None, stack_info=None)
        return super().format(logging.makeLogRecord(fields))  # a copy: other handlers see the original


def configure_logging(args: argparse.Namespace) -> int:
    """Send log records to stderr at the level the options ask for (the library never
    configures logging; only the CLI does). Returns the level."""
    name = getattr(args, "log_level", None)
    if name:
        level = int(getattr(logging, name.upper()))
    elif getattr(args, "quiet", False):
        level = logging.ERROR
    else:
        verbose = getattr(args, "verbose", 0) or 0
        level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(tracebacks=level <= logging.DEBUG))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, _Formatter)]:
        root.removeHandler(old)  # configured again (in-process callers, tests)
    root.addHandler(handler)
    root.setLevel(level)
    return level
