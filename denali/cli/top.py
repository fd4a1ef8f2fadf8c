"""``denali top``: a live table of the VMs of a kernel started with ``--metrics HOST:PORT``.

    denali top HOST:PORT [--interval S] [--sort KEY] [--once] [--width N]

Exit statuses: 0 after ``q`` or Ctrl-C; 1 when the kernel cannot be reached or stops
answering; 2 for a usage error. The screen itself is ``denali.top``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from denali import top
from denali.cli.common import EXIT_USAGE

_SORTS = sorted({c.key for c in top.COLUMNS if c.sort is not None})


def add_parser(sub: Any) -> None:
    """Add the ``top`` subcommand to the top-level subparsers."""
    t = sub.add_parser("top", help="a live table of the VMs of a kernel started with --metrics",
                       description="Columns: VM id, NAME (image), STATE, CPU% (share of one core "
                                   "over the last interval), TIME (CPU time), SLICES, HCALLS "
                                   "(hypercalls), IRQS (interrupts raised), RX/TX (frames), CONS "
                                   "(console bytes); wider terminals add PREEMPT, IDLES, BATCH "
                                   "(interrupt batches), BITS (interrupt bits), DROPS (NIC drops). "
                                   "Keys: P CPU%, T CPU time, N VM id, S slices, H hypercalls, "
                                   "< and > move the sort column, R reverses it, h hides the key "
                                   "line, q quits.")
    t.add_argument("address", metavar="HOST:PORT", help="the kernel's --metrics address")
    t.add_argument("--interval", "-d", type=float, default=1.0, help="seconds between refreshes (default 1)")
    t.add_argument("--sort", "-o", default="cpu", choices=_SORTS, metavar="KEY",
                   help=f"sort column: {', '.join(_SORTS)} (default cpu)")
    t.add_argument("--reverse", action="store_true", help="reverse the sort order")
    t.add_argument("--once", action="store_true",
                   help="print one frame as plain text and exit (without a terminal, frames repeat)")
    t.add_argument("--width", "-w", type=int, help="columns to fit (default: the terminal's)")


def run(args: argparse.Namespace) -> int:
    """Run ``denali top``."""
    host, _, port_text = args.address.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536 or args.interval <= 0 or (args.width is not None and args.width < 20):
        print(f"denali top: expected HOST:PORT with a port 1-65535, --interval > 0 and --width >= 20 "
              f"(got {args.address}, {args.interval}, {args.width})", file=sys.stderr)
        return EXIT_USAGE
    source = top.MetricsEndpoint(host or "127.0.0.1", port)
    view = top.View(sort=args.sort, reverse=args.reverse)
    try:
        asyncio.run(top.run(source, args.interval, view, once=args.once, width=args.width))
    except KeyboardInterrupt:
        return 0
    except (OSError, TimeoutError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        print(f"denali top: {source.label}: {why} (is a kernel running with --metrics {source.label}?)",
              file=sys.stderr)
        return 1
    return 0
