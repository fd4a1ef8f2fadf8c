"""The ``denali`` command line: a thin shell over the library (the only place that prints).

One module per subcommand (``boot``, ``disk``, ...); this one parses the command line
and dispatches. Exit statuses are in ``denali.cli.common``. Every bad value is one line
on stderr and exit status 2; no traceback ever reaches the user. The listing
subcommands (``images``, ``disk``, ``top``) end quietly, like any Unix tool, when the
reader of their output goes away (``denali images | head``); ``boot`` keeps its VMs
running and drops their console output instead (see ``denali.cli.boot``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from denali import top
from denali._version import __version__
from denali.cli import boot
from denali.cli import disk as disk_cli
from denali.cli.common import EXIT_FAILED, ArgumentParser, host_port, positive_float
from denali.images import builtin_images


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="denali", description="Denali isolation kernel on Unicorn.")
    p.add_argument("--version", action="version", version=f"denali {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    boot.add_parser(sub)
    sub.add_parser("images", help="list the built-in guest images")
    t = sub.add_parser("top", help="a live table of the VMs of a kernel started with --metrics")
    t.add_argument("address", metavar="HOST:PORT", type=host_port)
    t.add_argument("--interval", type=positive_float, default=1.0, help="seconds between refreshes")
    sub.add_parser("disk", help="create, pack and list disk images (denali disk -h)", add_help=False)
    return p


def _images() -> int:
    imgs = builtin_images()
    if not imgs:
        print("denali: no built-in images (reinstall: pip install .)", file=sys.stderr)
        return 1
    for name, path in imgs.items():
        print(f"{name:24} {path.stat().st_size:8d} bytes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``denali`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["boot"]:  # a reader that goes away ends a listing quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if argv[:1] == ["disk"]:
        return disk_cli.run(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "images":
        return _images()
    if args.command == "top":
        host, port = args.address
        try:
            asyncio.run(top.run(host, port, args.interval))
        except KeyboardInterrupt:
            return 0
        except (OSError, ValueError, TimeoutError) as exc:
            print(f"denali: top {host}:{port}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return 0
    return boot.run(args)


if __name__ == "__main__":
    sys.exit(main())
