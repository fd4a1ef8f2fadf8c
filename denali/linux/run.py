"""Run static i386 Linux programs in VMs: ``spawn_linux`` (a VM in a kernel you own) and
``run_linux`` (one program to completion, collecting its output).

The program's standard input is the VM's console input: ``stdin`` bytes are queued and
then closed (the program reads them, then end of file); with ``stdin=None`` the VM has
no console input and the program reads end of file at once; ``stdin=STREAM`` leaves
input open for the caller to feed (``vm.console.write_input``, ``close_input``). Its
standard output is the console's output stream and its standard error the console's
error stream, kept apart. The exit status is the program's (``exit_group``), or
128 + N when a signal N ended it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from denali.config import parse_size
from denali.devices.disk.spec import DiskSpec
from denali.errors import ImageError
from denali.kernel import Kernel
from denali.linux.process import DEFAULT_MEMORY, ProcessImage, compose
from denali.loader import LinuxProgram, load_linux_program
from denali.vm import Vm

STREAM: Final = object()
"""``stdin=STREAM``: console input stays open for the caller to write."""

_programs: dict[tuple[str, int, int], LinuxProgram] = {}
_images: dict[tuple[object, ...], ProcessImage] = {}


def load_program(path: str | os.PathLike[str]) -> LinuxProgram:
    """Parse and check a static Linux program once (cached by path, mtime and size)."""
    text = os.fspath(path)
    try:
        st = os.stat(text)
    except OSError as exc:
        raise ImageError(f"{text}: {exc.strerror or exc}") from None
    key = (os.path.realpath(text), st.st_mtime_ns, st.st_size)
    prog = _programs.get(key)
    if prog is None:
        prog = _programs[key] = load_linux_program(text)
    return prog


def process_image(
    program: str | os.PathLike[str] | LinuxProgram,
    argv: Sequence[str],
    env: Mapping[str, str] | Sequence[str] = (),
    memory: int | str = DEFAULT_MEMORY,
) -> ProcessImage:
    """The composed image (cached: VMs running the same command share it)."""
    prog = program if isinstance(program, LinuxProgram) else load_program(program)
    size = parse_size(memory)
    env_t = tuple(f"{k}={v}" for k, v in env.items()) if isinstance(env, Mapping) else tuple(env)
    key = (prog, tuple(argv), env_t, size)
    img = _images.get(key)
    if img is None:
        if len(_images) > 64:
            _images.clear()
        img = _images[key] = compose(prog, list(argv), list(env_t), size)
    return img


async def spawn_linux(
    kernel: Kernel,
    program: str | os.PathLike[str] | LinuxProgram,
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | Sequence[str] = (),
    memory: int | str = DEFAULT_MEMORY,
    disks: Sequence[DiskSpec] = (),
    cwd: str | None = None,
    stdin: bytes | object | None = None,
    net: str = "",
    trace: bool = False,
    report: bool = False,
    stdout: Callable[[bytes], None] | None = None,
    stderr: Callable[[bytes], None] | None = None,
    nic: bool = True,
) -> Vm:
    """Start ``program`` (a path or a ``LinuxProgram``) in a new VM of ``kernel``.

    ``argv`` defaults to ``[basename(program)]``. ``net`` is the guest network
    configuration (``"ip=10.0.0.2/24 gw=10.0.0.1"``); without it the program has no
    network (socket() fails with EAFNOSUPPORT... see docs/linux.md). ``trace`` prints
    every system call on the error stream; ``report`` (or ``trace``) the unimplemented
    ones at exit. ``stdout``/``stderr`` receive the streams as they are written
    (otherwise read ``vm.console``; without ``stderr`` the error stream joins it).
    Raises ``ImageError`` for a program that cannot run, ``ConfigError`` for bad options.
    """
    prog = program if isinstance(program, LinuxProgram) else load_program(program)
    args = list(argv) if argv is not None else [prog.name]
    pimg = process_image(prog, args, env, memory)
    epoch = time.time_ns() - kernel.now_ns()
    cmd = pimg.cmdline(epoch_ns=epoch, cwd=cwd, extra=net, trace=trace, report=report)
    vm = await kernel.spawn(
        pimg.image, memory=pimg.image.fixed_memory, cmdline=cmd, console=stdout, disks=disks, nic=nic
    )
    vm.console.err_sink = stderr
    if stdin is STREAM:
        vm.console.open_input()
    elif isinstance(stdin, (bytes, bytearray, memoryview)):
        data = bytes(stdin)
        vm.console.open_input()
        if data:
            kernel._owner.spawn(_feed(vm, data), name=f"denali-stdin-{vm.id}")
        else:
            vm.console.close_input()
    elif stdin is not None:
        raise TypeError("stdin must be bytes, None or STREAM")
    return vm


async def _feed(vm: Vm, data: bytes) -> None:
    await vm.console.write_input(data)
    vm.console.close_input()


@dataclass(frozen=True)
class LinuxResult:
    """What ``run_linux`` returns."""

    status: int
    stdout: bytes
    stderr: bytes
    syscalls: int
    """System calls the program made (routed to the personality)."""


async def run_linux(
    program: str | os.PathLike[str] | LinuxProgram,
    argv: Sequence[str] | None = None,
    *,
    kernel: Kernel | None = None,
    **options: object,
) -> LinuxResult:
    """Run ``program`` to completion in a VM and return its status and output.

    Options are ``spawn_linux``'s. Without ``kernel`` a private one is made and closed.
    A fault of the VM raises ``GuestFault`` (the program touched memory it does not have,
    say: Linux would have sent it SIGSEGV)."""
    if kernel is None:
        async with Kernel() as k:
            return await run_linux(program, argv, kernel=k, **options)
    out = bytearray()
    err = bytearray()
    vm = await spawn_linux(kernel, program, argv, stdout=out.extend, stderr=err.extend, **options)  # type: ignore[arg-type]
    status = await vm.wait()
    return LinuxResult(status, bytes(out), bytes(err), syscalls_of(vm))


def syscalls_of(vm: Vm) -> int:
    """System calls a Linux VM's program has made so far (``Vm.syscalls``: kept across swap)."""
    return vm.syscalls


__all__ = (
    "STREAM",
    "LinuxResult",
    "load_program",
    "process_image",
    "run_linux",
    "spawn_linux",
    "syscalls_of",
)
