"""``denali new``: a small guest project that builds with ``denali cc`` and boots as is.

``new_project(path)`` makes the directory ``path`` and writes ``NAME.c`` (a guest that
greets, reads its command line, idles 10 ms and exits 0) and a ``Makefile`` (``make``
builds ``NAME.elf`` with ``denali cc``; ``make run`` boots it), NAME being the
directory's last component.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from denali.errors import SdkError

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")

_C_FILE: Final = """\
/* {name}: a denali guest (see docs/sdk.md in the denali sources for the API).
 * Build: make    Boot: make run, or denali boot ./{name}.elf --cmdline name=you */
#include <ilwaco.h>
#include <stdio.h>

int main(int argc, char **argv)
{{
    char who[64];
    if (cmdline_get("name", who, sizeof who) < 0)
        snprintf(who, sizeof who, "world");
    printf("Hello, %s! This is {name}, VM %u, with %u KiB of memory.\\n", who,
           DENALI_VREGS->vm_id, DENALI_VREGS->mem_size / 1024);
    for (int i = 0; i < argc; i++)
        printf("  argv[%d] = %s\\n", i, argv[i]);

    uint64_t t0 = clock_ns();
    thread_sleep_ns(10 * 1000 * 1000); /* idles: a sleeping guest costs its host nothing */
    printf("slept %u us\\n", (unsigned)((clock_ns() - t0) / 1000));
    return 0; /* the exit status denali boot reports */
}}
"""

_MAKEFILE: Final = """\
# {name}: a denali guest, built with the guest SDK of the installed denali package.
#   make        build {name}.elf (every .c file here is part of it)
#   make run    boot it: denali boot ./{name}.elf
#   make clean
# DENALI is the denali command (e.g. make DENALI=~/venv/bin/denali when it is not on PATH).
DENALI ?= denali
CC      = $(DENALI) cc
CFLAGS ?= -O2 -Wall -Wextra
OBJS   := $(patsubst %.c,%.o,$(wildcard *.c))

{name}.elf: $(OBJS)
\t$(CC) $(CFLAGS) -o $@ $^

%.o: %.c $(wildcard *.h)
\t$(CC) $(CFLAGS) -c -o $@ $<

run: {name}.elf
\t$(DENALI) boot ./{name}.elf

clean:
\trm -f {name}.elf $(OBJS)

.PHONY: run clean
"""


def new_project(path: str | Path) -> list[Path]:
    """Write a new guest project into the directory ``path`` (created; it must not exist
    or be empty) and return the files written. ``SdkError`` says why not."""
    where = Path(path)
    name = where.resolve().name
    if not _NAME.fullmatch(name):
        raise SdkError(f"{path}: a project name is a letter or _ then letters, digits, _ or - (at most 64)")
    try:
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise SdkError(f"{path}: already exists and is not an empty directory")
        where.mkdir(parents=True, exist_ok=True)
        files = [where / f"{name}.c", where / "Makefile"]
        files[0].write_text(_C_FILE.format(name=name))
        files[1].write_text(_MAKEFILE.format(name=name))
    except OSError as exc:
        raise SdkError(f"{path}: cannot write the project: {exc.strerror or exc}") from None
    return files
