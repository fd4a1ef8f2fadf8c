"""The ``denali`` command line: a thin shell over the library (the only place that prints).

One module per subcommand (``boot``, ``disk``, ...); this one parses the command line
and dispatches. Exit statuses are in ``denali.cli.common``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from denali import top
from denali.cli import boot
from denali.cli import disk as disk_cli
from denali.cli import linux as linux_cli
from denali.images import builtin_images


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="denali", description="Denali isolation kernel on Unicorn.")
    sub = p.add_subparsers(dest="command", required=True)
    boot.add_parser(sub)
    linux_cli.add_parser(sub)
    sub.add_parser("images", help="list the built-in guest images")
    t = sub.add_parser("top", help="a live table of the VMs of a kernel started with --metrics")
    t.add_argument("address", metavar="HOST:PORT")
    t.add_argument("--interval", type=float, default=1.0)
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
    if argv[:1] == ["disk"]:
        return disk_cli.run(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "images":
        return _images()
    if args.command == "top":
        host, _, port = args.address.rpartition(":")
        try:
            asyncio.run(top.run(host or "127.0.0.1", int(port), args.interval))
        except KeyboardInterrupt:
            return 0
        except (OSError, ValueError, TimeoutError) as exc:
            print(f"denali: top {args.address}: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "linux":
        return linux_cli.run(args)
    return boot.run(args)


if __name__ == "__main__":
    sys.exit(main())
