"""What the ``denali`` subcommands share: exit statuses, one-line usage errors, value parsers."""

from __future__ import annotations

import argparse
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


def positive_float(text: str) -> float:
    """A number of seconds above 0 (and finite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value
