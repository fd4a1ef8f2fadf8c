"""``denali cc`` and ``denali new``: build guests outside the repository with the guest SDK.

    denali cc [gcc options and files]     e.g. denali cc -O2 -o hello.elf hello.c
    denali cc --print-sdk                 where the SDK (include/, lib/) is
    denali new NAME                       a project directory NAME: NAME.c and a Makefile

``denali cc`` exits with gcc's status; after a link it also checks the image with the
kernel's loader, so an image denali would refuse is reported now (status 1). An SDK
or compiler that is missing is one line and status 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from denali.cli.common import EXIT_INTERRUPTED, EXIT_USAGE
from denali.errors import ImageError, SdkError
from denali.loader import load_image
from denali.sdk import cc, find_sdk
from denali.sdk.project import new_project


def add_parser(sub: Any) -> None:
    """Add ``cc`` (its arguments go to gcc: see ``run_cc``) and ``new``."""
    sub.add_parser(
        "cc", help="compile and link a guest with the machine's gcc (denali cc -o g.elf g.c)", add_help=False
    )
    n = sub.add_parser("new", help="write a new guest project (a C file and a Makefile using denali cc)")
    n.add_argument("name", help="the project directory to create; its last component names the guest")


def run_cc(argv: Sequence[str]) -> int:
    """Run ``denali cc ARGS``: gcc with the SDK's flags, then the loader's check of the image."""
    args = list(argv)
    try:
        sdk = find_sdk()
        if args == ["--print-sdk"]:
            print(sdk.root)
            return 0
        compiler = cc.compiler()
        cmd = cc.command(args, sdk, compiler, cc.compiler_include(compiler))
        try:
            status = subprocess.run(cmd, check=False).returncode
        except OSError as exc:
            raise SdkError(f"cannot run {compiler[0]}: {exc.strerror or exc}") from None
    except SdkError as exc:
        print(f"denali cc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if status != 0 or not cc.links(args):
        return status
    out = cc.output(args)
    if os.path.isfile(out):
        try:
            load_image(out)
        except ImageError as exc:
            print(f"denali cc: the kernel would refuse this image: {exc}", file=sys.stderr)
            return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``denali new NAME``."""
    try:
        files = new_project(args.name)
    except SdkError as exc:
        print(f"denali new: {exc}", file=sys.stderr)
        return EXIT_USAGE
    where = files[0].parent
    print(f"{where}: wrote {', '.join(f.name for f in files)}")
    print(f"next: cd {where} && make && denali boot ./{files[0].stem}.elf")
    return 0
