"""The ``denali`` command line: a thin shell over the library (the only place that prints).

One module per subcommand (``boot``, ``disk``, ...); this one parses the command line
and dispatches. Exit statuses are in ``denali.cli.common``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from denali.cli import boot
from denali.cli import disk as disk_cli
from denali.cli import sdk as sdk_cli
from denali.cli import top as top_cli
from denali.images import builtin_images


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="denali", description="Denali isolation kernel on Unicorn.")
    sub = p.add_subparsers(dest="command", required=True)
    boot.add_parser(sub)
    sub.add_parser("images", help="list the built-in guest images")
    top_cli.add_parser(sub)
    sub.add_parser("disk", help="create, pack and list disk images (denali disk -h)", add_help=False)
    sdk_cli.add_parser(sub)
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
    if argv[:1] == ["cc"]:
        return sdk_cli.run_cc(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "images":
        return _images()
    if args.command == "new":
        return sdk_cli.run(args)
    if args.command == "top":
        return top_cli.run(args)
    return boot.run(args)


if __name__ == "__main__":
    sys.exit(main())
