"""``denali disk``: create, pack and list disk images (the logic behind the subcommand).

    denali disk create IMAGE --size 64M [--force]
    denali disk pack DIR IMAGE [--size SIZE] [--label TEXT] [--force] [--[no-]progress]
    denali disk ls IMAGE [--verify] [--[no-]progress]

``pack`` and ``ls --verify`` show progress on stderr once they have taken a second: a
bar on a terminal; with ``--progress`` also plain lines elsewhere (``denali.progress``).

``run(argv)`` returns the exit status: 0 on success; 2 for a bad value, one line on
stderr: a bad option, or a file named that is missing, of the wrong kind, already there
(without ``--force``), truncated, corrupt (``ls --verify``: a file's CRC-32 is wrong), or
that cannot be written (every ``DiskError``, as in ``denali boot --disk``); 1 when the
host fails otherwise (an I/O error the disk code did not expect); 130 after Ctrl-C (a
half-written image is removed). It owns its event loop (``asyncio.run``): call it only
from a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from denali.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ArgumentParser,
    configure_logging,
    log_options,
)
from denali.config import parse_size
from denali.devices.disk import tools
from denali.errors import ConfigError

if TYPE_CHECKING:  # rich: imported where a progress display is shown
    from denali.progress import JobProgress

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    """Add the ``disk`` subcommand to the top-level subparsers."""
    d = sub.add_parser(
        "disk",
        help="create, pack and list disk images (denali disk -h)",
        description=_DESCRIPTION,
        parents=[log_options(top=False)],
    )
    _add_actions(d)


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="denali disk", description=_DESCRIPTION, parents=[log_options(top=True)])
    _add_actions(p)
    return p


_DESCRIPTION = "Create, pack and list disk images (fixed size, 4 KiB blocks)."


def _add_actions(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    logs = log_options(top=False)
    c = sub.add_parser("create", help="create a blank (sparse, all-zero) disk image", parents=[logs])
    c.add_argument("image")
    c.add_argument("--size", "-s", required=True, help="size, a multiple of 4K (e.g. 64M, 1G)")
    c.add_argument("--force", "-f", action="store_true", help="replace an existing file")
    k = sub.add_parser("pack", help="pack a directory into a DNLFS image the guest can read", parents=[logs])
    k.add_argument("directory")
    k.add_argument("image")
    k.add_argument("--size", "-s", help="image size (default: just large enough)")
    k.add_argument("--label", default="", help="file-system label (at most 31 bytes)")
    k.add_argument("--force", "-f", action="store_true", help="replace an existing file")
    _progress_option(k)
    ls = sub.add_parser(
        "ls", help="check an image and list its files (or describe an overlay)", parents=[logs]
    )
    ls.add_argument("image")
    ls.add_argument("--verify", action="store_true", help="also check every file's CRC-32")
    _progress_option(ls)


def _progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr after a second (default: on a terminal)",
    )


def _progress(args: argparse.Namespace, what: str) -> JobProgress | None:
    """A progress display for this command, or None when it must stay quiet."""
    if args.progress is False or (args.progress is None and not sys.stderr.isatty()):
        return None
    from denali.progress import JobProgress  # rich: loaded only when shown

    return JobProgress(what, 0, sys.stderr)


async def _main(args: argparse.Namespace) -> int:
    if args.action == "create":
        await tools.create_image(args.image, parse_size(args.size), force=args.force)
        print(f"{args.image}: created, {parse_size(args.size)} bytes")
        return 0
    if args.action == "pack":
        size = parse_size(args.size) if args.size else None
        shown = _progress(args, f"packing {args.image}")
        try:
            entries = await tools.pack_directory(
                args.directory,
                args.image,
                size,
                args.label,
                args.force,
                progress=shown.update if shown else None,
            )
        finally:
            if shown is not None:
                shown.close()
        print(f"{args.image}: packed {len(entries)} files from {args.directory}")
        return 0
    shown = _progress(args, f"verifying {args.image}") if args.verify else None
    try:
        listing = await tools.list_image(
            args.image, verify=args.verify, progress=shown.update if shown else None
        )
    finally:
        if shown is not None:
            shown.close()
    for line in tools.format_listing(args.image, listing):
        print(line)
    return 0


def run(argv: Sequence[str]) -> int:
    """Parse ``argv`` (what follows ``denali disk``) and ``execute`` it; see the module
    docstring for exit statuses. Configures logging, like ``denali``."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # -h (0) or a usage error (2, already said)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    configure_logging(args)
    return execute(args)


def execute(args: argparse.Namespace) -> int:
    """Run one parsed ``denali disk`` command; its exit status."""
    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:  # DiskError is one
        print(f"denali: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        log.debug("disk %s failed", args.action, exc_info=exc)
        print(f"denali: disk {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
