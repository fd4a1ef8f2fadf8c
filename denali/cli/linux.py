"""``denali linux``: run an unmodified static i386 Linux program in one or more VMs.

The program's standard output and error go to the host's, kept apart (with several VMs
each line is prefixed with ``[vmN]``). Standard input: with one VM the host's standard
input is streamed to it; ``--stdin FILE`` gives every VM that file; otherwise (several
VMs) the programs read end of file. Exit statuses are ``denali boot``'s: with one VM the
program's (128 + N when signal N ended it); with several, 0 if every program exited 0,
else 1; 125 if a VM faulted (the report goes to stderr); 130 after Ctrl-C; 2 for a
usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from typing import Any

import aiofiles

from denali.cli.boot import _cmdline_for, _outcome
from denali.cli.common import EXIT_INTERRUPTED, EXIT_USAGE
from denali.config import KernelConfig, parse_size
from denali.devices.disk import parse_disk_arg
from denali.errors import DenaliError
from denali.kernel import Kernel
from denali.linux import DEFAULT_MEMORY, STREAM, spawn_linux
from denali.net.tap import TapPort
from denali.net.vxlan import VxlanPort
from denali.vm import Vm


def add_parser(sub: Any) -> None:
    """Add the ``linux`` subcommand to the top-level subparsers."""
    p = sub.add_parser("linux", help="run a static i386 Linux program in Denali VMs",
                       description="Run an unmodified, statically linked i386 Linux program in "
                                   "Denali VMs (its system calls are served by an in-VM personality).")
    p.add_argument("program", help="path of the static i386 Linux executable")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments ({i}: the VM's index)")
    p.add_argument("--count", "-n", type=int, default=1, help="number of VMs (default 1)")
    p.add_argument("--memory", "-m", default=f"{DEFAULT_MEMORY >> 20}M",
                   help=f"guest memory per VM, sparse (default {DEFAULT_MEMORY >> 20}M)")
    p.add_argument("--disk", action="append", default=[],
                   metavar="[NAME=]PATH[:keep[=OVERLAY]|:discard|:ro|:rw]",
                   help="a disk for every VM (repeatable; {i} becomes the VM's index); the one "
                        "named root, or else the first, is /, the others /NAME")
    p.add_argument("--env", "-e", action="append", default=[], metavar="K=V",
                   help="an environment variable (repeatable; the environment is otherwise empty)")
    p.add_argument("--cwd", help="working directory inside the VM (default /)")
    p.add_argument("--stdin", metavar="FILE", help="every VM reads FILE as its standard input")
    p.add_argument("--ip", metavar="ADDR/N",
                   help="the guest's IPv4 address; {i} and {ip:BASE} as in boot --cmdline")
    p.add_argument("--gw", metavar="ADDR", help="the guest's default gateway")
    p.add_argument("--net", action="append", default=[],
                   metavar="tap:NAME | vxlan:VNI@REMOTE[:PORT][,local=ADDR[:PORT]]",
                   help="join the virtual LAN to a Linux TAP device or to VXLAN (as denali boot)")
    p.add_argument("--trace", action="store_true",
                   help="print every system call on stderr, and the unimplemented ones at exit")
    p.add_argument("--report", action="store_true",
                   help="print the unimplemented system calls the program made, at exit")
    p.add_argument("--slice-us", type=int, default=KernelConfig.slice_us)
    p.add_argument("--memory-budget", metavar="SIZE", help="resident memory allowed; idle VMs swap out")
    p.add_argument("--workers", type=int, default=0, help="run slices on N worker threads")


class _Writer:
    """Writes one VM's stream to a host stream; with several VMs line by line, each line
    prefixed with ``[vmN]`` (``finish`` writes an unterminated last line)."""

    def __init__(self, stream: Any, index: int, multi: bool) -> None:
        self.stream = stream
        self.prefix = b"[vm%d] " % index if multi else b""
        self.partial = bytearray()

    def __call__(self, data: bytes) -> None:
        if not self.prefix:
            self.stream.write(data)
            self.stream.flush()
            return
        self.partial.extend(data)
        *lines, rest = self.partial.split(b"\n")
        for line in lines:
            self.stream.write(self.prefix + line + b"\n")
        self.partial[:] = rest
        self.stream.flush()

    def finish(self) -> None:
        if self.partial:
            self.stream.write(self.prefix + bytes(self.partial) + b"\n")
            self.partial.clear()
            self.stream.flush()


def _pump_stdin(vm: Vm, loop: asyncio.AbstractEventLoop) -> None:
    """Stream the host's standard input to the VM from a daemon thread (a blocked read on
    a terminal must never keep the process alive once the program has ended)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def reader() -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            except (RuntimeError, asyncio.CancelledError, Exception):
                return
            if not data:
                return

    async def feed() -> None:
        while True:
            data = await queue.get()
            if not data:
                vm.console.close_input()
                return
            await vm.console.write_input(data)

    threading.Thread(target=reader, name="denali-stdin", daemon=True).start()
    task = loop.create_task(feed())
    vm.kernel._own(task)


async def _run(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise DenaliError("--count must be at least 1")
    env = []
    for item in args.env:
        if "=" not in item:
            raise DenaliError(f"--env {item!r}: expected K=V")
        env.append(item)
    stdin_data: bytes | None = None
    if args.stdin:
        try:
            async with aiofiles.open(args.stdin, "rb") as f:
                stdin_data = await f.read()
        except OSError as exc:
            raise DenaliError(f"--stdin {args.stdin}: {exc.strerror or exc}") from None
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    multi = args.count > 1
    budget = parse_size(args.memory_budget) if args.memory_budget else None
    config = KernelConfig(slice_us=args.slice_us, workers=args.workers, memory_budget=budget)
    async with Kernel(config) as k:
        ports: list[TapPort | VxlanPort] = []
        for spec in args.net:
            kind, _, rest = spec.partition(":")
            if kind == "tap" and rest:
                tp = TapPort(rest)
                tp.open()
                ports.append(tp)
                k.switch.attach(tp)
            elif kind == "vxlan" and rest:
                vx = VxlanPort.parse(rest)
                await vx.open()
                ports.append(vx)
                k.switch.attach(vx)
            else:
                raise DenaliError(f"--net {spec!r}: expected tap:NAME or vxlan:VNI@REMOTE[:PORT]")
        vms = []
        writers: list[_Writer] = []
        try:
            for i in range(1, args.count + 1):
                if interrupted.is_set():
                    return EXIT_INTERRUPTED
                net = ""
                if args.ip:
                    net = "ip=" + _cmdline_for(args.ip, i)
                    if args.gw:
                        net += " gw=" + _cmdline_for(args.gw, i)
                argv = [os.path.basename(args.program)] + [a.replace("{i}", str(i)) for a in args.args]
                stdin: bytes | object | None = stdin_data
                if stdin is None and not multi:
                    stdin = STREAM
                out, err = _Writer(sys.stdout.buffer, i, multi), _Writer(sys.stderr.buffer, i, multi)
                writers += (out, err)
                vm = await spawn_linux(k, args.program, argv, env=env, memory=args.memory,
                                       disks=[parse_disk_arg(d, index=i) for d in args.disk],
                                       cwd=args.cwd, stdin=stdin, net=net, trace=args.trace,
                                       report=args.report, stdout=out, stderr=err)
                if stdin is STREAM:
                    _pump_stdin(vm, loop)
                vms.append(vm)
                await asyncio.sleep(0)
            waiter = asyncio.ensure_future(asyncio.gather(*(_outcome(vm) for vm in vms)))
            stopper = asyncio.ensure_future(interrupted.wait())
            pending: set[asyncio.Future[Any]] = {waiter, stopper}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                await k.close()
                await waiter
                stopper.cancel()
                return EXIT_INTERRUPTED
            stopper.cancel()
            codes = waiter.result()
        finally:
            for w in writers:
                w.finish()
            for port in ports:
                port.close()
    if not multi:
        return codes[0]
    return 0 if all(c == 0 for c in codes) else 1


def run(args: argparse.Namespace) -> int:
    """Run ``denali linux`` (owns the event loop: uvloop)."""
    try:
        import uvloop
        return uvloop.run(_run(args))
    except DenaliError as exc:
        print(f"denali: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
