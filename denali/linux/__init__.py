"""Pre-virtualization: unmodified static i386 Linux programs in Denali VMs.

A Linux VM holds the program at its link address and, beside it in pages of its own,
the *personality* (guestos/linux/): a guestos image that serves the program's
``int $0x80`` system calls in guest code, on the virtual architecture (console, clock
and idle-with-timeout, the disks, the guest TCP/IP stack). The kernel only routes the
program's ``int $0x80`` to it (``SYSCALL_ENTRY``) and offers what cannot be done from
inside a VM (``MEM_PROTECT``, ``SET_TLS``, ``RANDOM``, console input and a separate
error stream). See docs/linux.md.
"""

from denali.linux.process import DEFAULT_MEMORY, ProcessImage, compose
from denali.linux.run import (
    STREAM,
    LinuxResult,
    load_program,
    process_image,
    run_linux,
    spawn_linux,
    syscalls_of,
)

__all__ = (
    "DEFAULT_MEMORY",
    "STREAM",
    "LinuxResult",
    "ProcessImage",
    "compose",
    "load_program",
    "process_image",
    "run_linux",
    "spawn_linux",
    "syscalls_of",
)
