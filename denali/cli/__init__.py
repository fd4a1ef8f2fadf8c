"""The ``denali`` command line: a thin shell over the library (the only place that prints).

One module per subcommand (``boot``, ``disk``, ``top``, ``cc``/``new``, ...); this one
parses the command line and dispatches. Exit statuses are in ``denali.cli.common``.
Every bad value is one line on stderr and exit status 2; no traceback ever reaches the
user. The listing subcommands (``images``, ``disk``, ``top``) end quietly, like any
Unix tool, when the reader of their output goes away (``denali images | head``);
``boot`` keeps its VMs running and drops their console output instead (see
``denali.cli.boot``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from denali._version import __version__
from denali.cli import boot
from denali.cli import ctl as ctl_cli
from denali.cli import disk as disk_cli
from denali.cli import linux as linux_cli
from denali.cli import sdk as sdk_cli
from denali.cli import top as top_cli
from denali.cli.common import EXIT_FAILED, ArgumentParser, configure_logging, log_options, whole_line_stderr
from denali.images import builtin_images

log = logging.getLogger(__name__)


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="denali", description="Denali isolation kernel on Unicorn.", parents=[log_options(top=True)]
    )
    p.add_argument("--version", action="version", version=f"denali {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    logs = log_options(top=False)
    boot.add_parser(sub)
    im = sub.add_parser("images", help="list the built-in guest images", parents=[logs])
    im.add_argument("--all", "-a", action="store_true", help="also the test and benchmark guests")
    top_cli.add_parser(sub, parents=[logs])
    ctl_cli.add_parser(sub, parents=[logs])
    disk_cli.add_parser(sub)
    sdk_cli.add_parser(sub)
    linux_cli.add_parser(sub)
    return p


def _images(everything: bool) -> int:
    """Guests users boot first; the test suite's (``test-*``) and the benchmarks'
    (``bench-*``) after them, marked, or only with ``--all``."""
    imgs = builtin_images()
    if not imgs:
        print("denali: no built-in images (reinstall: pip install .)", file=sys.stderr)
        return 1
    kinds = {
        name: "test" if name.startswith("test-") else "benchmark" if name.startswith("bench-") else "guest"
        for name in imgs
    }
    shown = sorted(imgs, key=lambda n: (kinds[n] != "guest", kinds[n], n))
    for name in shown:
        if kinds[name] == "guest" or everything:
            note = "" if kinds[name] == "guest" else f"  ({kinds[name]} guest)"
            print(f"{name:24} {imgs[name].stat().st_size:8d} bytes{note}")
    hidden = sum(1 for n in imgs if kinds[n] != "guest")
    if hidden and not everything:
        print(f"(and {hidden} test and benchmark guests: denali images --all)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``denali`` console script."""
    whole_line_stderr()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["cc"]:  # gcc's own options pass through unparsed
        return sdk_cli.run_cc(args_list[1:])
    args = _parser().parse_args(args_list)
    configure_logging(args)
    if args.command != "boot":  # a reader that goes away ends a listing quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return _run(args)
    except Exception as exc:  # a bug: one line; the traceback is in the log at debug level
        log.error("internal error: %r (run with -vv for the traceback)", exc, exc_info=exc)
        return EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    if args.command == "images":
        return _images(args.all)
    if args.command == "disk":
        return disk_cli.execute(args)
    if args.command == "top":
        return top_cli.run(args)
    if args.command == "ctl":
        return ctl_cli.run(args)
    if args.command == "new":
        return sdk_cli.run(args)
    if args.command == "linux":
        return linux_cli.run(args)
    return boot.run(args)


if __name__ == "__main__":
    sys.exit(main())
