"""``denali cc``: the machine's gcc, told how to build a denali guest (like ``musl-gcc``).

``command(args, sdk, ...)`` turns a gcc command line into one that compiles for the
guest (i386, freestanding, the SDK's headers instead of the host's) and, when gcc would
link, links a guest image: ``crt0.o`` first, the SDK's linker script (text at
``0x10000``, one segment per permission), the guestos libraries last, nothing from the
host. Everything else on the command line (``-O2``, ``-g``, ``-Wall``, ``-I``, ``-D``,
``-o``, extra objects and libraries) goes to gcc unchanged, so existing Makefiles work
with ``CC = denali cc``.

The compiler is ``gcc`` or the command in ``DENALI_CC`` (split like a shell would).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import Final

from denali.errors import SdkError
from denali.sdk import Sdk

_NO_LINK: Final = frozenset({"-c", "-S", "-E", "-M", "-MM", "-fsyntax-only"})
"""gcc options after which it does not link."""
_TAKES_VALUE: Final = frozenset(
    {
        "-o",
        "-I",
        "-L",
        "-D",
        "-U",
        "-l",
        "-u",
        "-e",
        "-z",
        "-T",
        "-x",
        "-include",
        "-imacros",
        "-isystem",
        "-iquote",
        "-idirafter",
        "-iprefix",
        "-MF",
        "-MT",
        "-MQ",
        "-Xlinker",
        "-Xassembler",
        "-Xpreprocessor",
        "-aux-info",
        "--param",
    }
)
"""gcc options whose value is the next word (so that word is not an input file)."""


def compiler(env: Mapping[str, str] | None = None) -> list[str]:
    """The compiler command: ``DENALI_CC`` (shell-split) or ``gcc``."""
    env = os.environ if env is None else env
    words = shlex.split(env.get("DENALI_CC", "")) or ["gcc"]
    return words


def inputs(args: Sequence[str]) -> list[str]:
    """The input files on a gcc command line (words that are neither options nor option values)."""
    found = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in _TAKES_VALUE:
            skip = True
        elif a == "-" or not a.startswith("-"):
            found.append(a)
    return found


def links(args: Sequence[str]) -> bool:
    """Whether gcc would link: it has input files and no option that stops before linking."""
    return bool(inputs(args)) and not any(a in _NO_LINK for a in args)


def output(args: Sequence[str]) -> str:
    """The file a linking command line writes (``-o FILE``, ``-oFILE``; gcc's default ``a.out``)."""
    out = "a.out"
    for i, a in enumerate(args):
        if a == "-o" and i + 1 < len(args):
            out = args[i + 1]
        elif a.startswith("-o") and len(a) > 2:
            out = a[2:]
    return out


def compiler_include(cc: Sequence[str]) -> str:
    """The compiler's own header directory (``stddef.h``, ``stdint.h``, ``stdarg.h``)."""
    try:
        r = subprocess.run(
            [*cc, "-print-file-name=include"], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise SdkError(
            f"{cc[0]} not found: denali cc needs the machine's gcc and GNU ld "
            "(e.g. apt-get install gcc), or set DENALI_CC"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SdkError(f"cannot run {cc[0]}: {exc}") from None
    path = r.stdout.strip()
    if r.returncode != 0 or not os.path.isdir(path):
        raise SdkError(
            f"{shlex.join(cc)} does not report its header directory "
            "(-print-file-name=include): denali cc needs gcc"
        )
    return path


def command(args: Sequence[str], sdk: Sdk, cc: Sequence[str], cc_include: str) -> list[str]:
    """The full compiler command for a ``denali cc`` command line ``args``."""
    cmd = [*cc, *sdk.cflags, "-isystem", str(sdk.include), "-isystem", cc_include]
    if not links(args):
        return [*cmd, *args]
    return [
        *cmd,
        "-static",
        "-no-pie",
        f"-Wl,-T,{sdk.linker_script}",
        "-Wl," + ",".join(sdk.ldflags),
        str(sdk.crt0),
        *args,
        f"-L{sdk.lib}",
        "-Wl,--start-group",
        *(f"-l{name}" for name in sdk.libs),
        "-Wl,--end-group",
    ]
