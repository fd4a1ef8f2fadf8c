"""``denali top``: a live table of the VMs of a kernel started with ``--metrics HOST:PORT``
or ``--api PATH``.

    denali top HOST:PORT|PATH [--interval S] [--sort KEY] [--once] [--width N]

Exit statuses: 0 after ``q`` or Ctrl-C; 1 when the kernel cannot be reached or stops
answering; 2 for a usage error. The screen itself is ``denali.top``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
from collections.abc import Sequence
from typing import Any

from denali import top
from denali.cli.common import host_port, positive_float

_SORTS = sorted({c.key for c in top.COLUMNS if c.sort is not None})


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add the ``top`` subcommand to the top-level subparsers."""
    t = sub.add_parser(
        "top",
        help="a live table of the VMs of a kernel started with --metrics",
        parents=list(parents),
        description="Columns: VM id, NAME (image), STATE, CPU% (share of one core "
        "over the last interval), TIME (CPU time), SLICES, HCALLS "
        "(hypercalls), IRQS (interrupts raised), RX/TX (frames), CONS "
        "(console bytes); wider terminals add PREEMPT, IDLES, BATCH "
        "(interrupt batches), BITS (interrupt bits), DROPS (NIC drops). "
        "Keys: P CPU%, T CPU time, N VM id, S slices, H hypercalls, "
        "< and > move the sort column, R reverses it, h hides the key "
        "line, q quits.",
    )
    t.add_argument(
        "address",
        metavar="HOST:PORT|PATH",
        type=_address,
        help="the kernel's --metrics address, or its --api socket path",
    )
    t.add_argument(
        "--interval", "-d", type=positive_float, default=1.0, help="seconds between refreshes (default 1)"
    )
    t.add_argument(
        "--sort",
        "-o",
        default="cpu",
        choices=_SORTS,
        metavar="KEY",
        help=f"sort column: {', '.join(_SORTS)} (default cpu)",
    )
    t.add_argument("--reverse", action="store_true", help="reverse the sort order")
    t.add_argument(
        "--once",
        action="store_true",
        help="print one frame as plain text and exit (without a terminal, frames repeat)",
    )
    t.add_argument("--width", "-w", type=_width, help="columns to fit (default: the terminal's, at least 20)")


def _address(text: str) -> tuple[str, int] | str:
    """A socket path (it has a '/' or names a socket) or HOST:PORT."""
    if "/" in text or (os.path.exists(text) and stat.S_ISSOCK(os.stat(text).st_mode)):
        return text
    return host_port(text)


def _width(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 20:
        raise argparse.ArgumentTypeError(f"expected a width of at least 20 columns, not {text!r}")
    return n


def run(args: argparse.Namespace) -> int:
    """Run ``denali top``."""
    source: top.TopSource
    if isinstance(args.address, str):
        source = top.ApiSocket(args.address)
    else:
        source = top.MetricsEndpoint(*args.address)
    view = top.View(sort=args.sort, reverse=args.reverse)
    try:
        asyncio.run(top.run(source, args.interval, view, once=args.once, width=args.width))
    except KeyboardInterrupt:
        return 0
    except (OSError, TimeoutError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        flag = "--api" if isinstance(args.address, str) else "--metrics"
        print(
            f"denali top: {source.label}: {why} (is a kernel running with {flag} {source.label}?)",
            file=sys.stderr,
        )
        return 1
    return 0
