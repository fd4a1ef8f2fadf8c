"""``denali linux``: run an unmodified static i386 Linux program in one or more VMs.

The program's standard output and error go to the host's, kept apart (with several VMs
each line is prefixed with ``[vmN]``), each through a bounded buffer and a writer thread
(``denali.cli.output``): the VMs never wait for a slow reader. Standard input: with one
VM the host's standard input is streamed to it; ``--stdin FILE`` gives every VM that
file; otherwise (several VMs) the programs read end of file. Exit statuses are
``denali boot``'s: with one VM the program's (128 + N when signal N ended it); with
several, 0 if every program exited 0, else 1; 125 if a VM faulted (the report goes to
stderr); 130 after Ctrl-C or SIGTERM (``denali.cli.signals``); 2 for a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from typing import Any

import aiofiles

from denali.cli import lan
from denali.cli.boot import _cmdline_for, _outcome, _status
from denali.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, log_options
from denali.cli.output import ConsoleOutput, PrefixedSink
from denali.cli.signals import StopSignals
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
    p = sub.add_parser(
        "linux",
        help="run a static i386 Linux program in Denali VMs",
        description="Run an unmodified, statically linked i386 Linux program in "
        "Denali VMs (its system calls are served by an in-VM personality).",
        parents=[log_options(top=False)],
    )
    p.add_argument("program", help="path of the static i386 Linux executable")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments ({i}: the VM's index)")
    p.add_argument("--count", "-n", type=int, default=1, help="number of VMs (default 1)")
    p.add_argument(
        "--memory",
        "-m",
        default=f"{DEFAULT_MEMORY >> 20}M",
        help=f"guest memory per VM, sparse (default {DEFAULT_MEMORY >> 20}M)",
    )
    p.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="[NAME=]PATH[:keep[=OVERLAY]|:discard|:ro|:rw]",
        help="a disk for every VM (repeatable; {i} becomes the VM's index); the one "
        "named root, or else the first, is /, the others /NAME",
    )
    p.add_argument(
        "--env",
        "-e",
        action="append",
        default=[],
        metavar="K=V",
        help="an environment variable (repeatable; the environment is otherwise empty)",
    )
    p.add_argument("--cwd", help="working directory inside the VM (default /)")
    p.add_argument("--stdin", metavar="FILE", help="every VM reads FILE as its standard input")
    p.add_argument(
        "--ip", metavar="ADDR/N", help="the guest's IPv4 address; {i} and {ip:BASE} as in boot --cmdline"
    )
    p.add_argument("--gw", metavar="ADDR", help="the guest's default gateway")
    p.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="tap:NAME[,host=ADDR/PREFIX] | vxlan:VNI@REMOTE[:PORT][,local=ADDR[:PORT]]",
        help="join the virtual LAN to a Linux TAP device or to VXLAN (as denali boot)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="print every system call on stderr, and the unimplemented ones at exit",
    )
    p.add_argument(
        "--report", action="store_true", help="print the unimplemented system calls the program made, at exit"
    )
    p.add_argument(
        "--slice-us",
        type=int,
        default=KernelConfig.slice_us,
        help=f"time slice in microseconds (default {KernelConfig.slice_us})",
    )
    p.add_argument("--memory-budget", metavar="SIZE", help="resident memory allowed; idle VMs swap out")
    p.add_argument("--swap-dir", metavar="DIR", help="where swap files go (default: a temporary directory)")
    p.add_argument("--workers", type=int, default=0, help="run slices on N worker threads")


def _pump_stdin(vm: Vm, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
    """Stream the host's standard input to the VM from a daemon thread (a blocked read on
    a terminal must never keep the process alive once the program has ended); the task
    that feeds the VM (the caller cancels it when the VM has ended)."""
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
    return loop.create_task(feed(), name=f"denali-stdin-{vm.id}")


async def _linux(args: argparse.Namespace, stop: StopSignals, out: ConsoleOutput, err: ConsoleOutput) -> int:
    """Run the VMs, wait for them, close; EXIT_INTERRUPTED when ``stop`` signalled first."""
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
    stopping = asyncio.Event()
    stop.bind(asyncio.get_running_loop(), stopping.set)
    budget = parse_size(args.memory_budget) if args.memory_budget else None
    config = KernelConfig(
        slice_us=args.slice_us, workers=args.workers, memory_budget=budget, swap_dir=args.swap_dir
    )
    async with Kernel(config) as k:
        body = asyncio.ensure_future(_run(k, args, env, stdin_data, out, err))
        stopper = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({body, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if body.done():
            return body.result()
        body.cancel()
        await asyncio.gather(body, return_exceptions=True)
    return EXIT_INTERRUPTED


async def _run(
    k: Kernel,
    args: argparse.Namespace,
    env: list[str],
    stdin_data: bytes | None,
    out: ConsoleOutput,
    err: ConsoleOutput,
) -> int:
    """Join the LAN's extras, spawn the VMs, wait for them; the exit status."""
    loop = asyncio.get_running_loop()
    multi = args.count > 1
    ports: list[TapPort | VxlanPort] = []
    feeders: list[asyncio.Task[None]] = []
    errs: list[PrefixedSink] = []
    try:
        for spec in args.net:
            kind, _, rest = spec.partition(":")
            if kind == "tap" and rest:
                tp = TapPort.parse(rest)
                tp.open()
                ports.append(tp)
                k.switch.attach(tp)
            elif kind == "vxlan" and rest:
                vx = VxlanPort.parse(rest)
                await vx.open()
                ports.append(vx)
                k.switch.attach(vx)
            else:
                raise DenaliError(
                    f"--net {spec!r}: expected tap:NAME[,host=ADDR/PREFIX] or vxlan:VNI@REMOTE[:PORT]"
                )
        nets = []
        for i in range(1, args.count + 1):
            net = ""
            if args.ip:
                net = "ip=" + _cmdline_for(args.ip, i)
                if args.gw:
                    net += " gw=" + _cmdline_for(args.gw, i)
            nets.append(net)
        vms: list[tuple[Vm, PrefixedSink]] = []
        for i in range(1, args.count + 1):
            argv = [os.path.basename(args.program)] + [a.replace("{i}", str(i)) for a in args.args]
            stdin: bytes | object | None = stdin_data
            if stdin is None and not multi:
                stdin = STREAM
            sink, esink = out.sink_for(i if multi else None), err.sink_for(i if multi else None)
            errs.append(esink)
            vm = await spawn_linux(
                k,
                args.program,
                argv,
                env=env,
                memory=args.memory,
                disks=[parse_disk_arg(d, index=i) for d in args.disk],
                cwd=args.cwd,
                stdin=stdin,
                net=nets[i - 1],
                trace=args.trace,
                report=args.report,
                stdout=sink,
                stderr=esink,
            )
            if stdin is STREAM:
                feeders.append(_pump_stdin(vm, loop))
            vms.append((vm, sink))
            if i == 1 and args.net:
                lan.report(nets, ports, sys.stderr)
            await asyncio.sleep(0)
        codes = await asyncio.gather(*(_outcome(vm, sink) for vm, sink in vms))
    finally:
        for t in feeders:
            t.cancel()
        for e in errs:
            e.finish()
        for port in ports:
            port.close()
    return _status(codes)


def run(args: argparse.Namespace) -> int:
    """Run ``denali linux`` (owns the event loop: uvloop, the stop signals, stdout and
    stderr)."""
    import uvloop

    with StopSignals() as stop:
        out = ConsoleOutput(sys.stdout.fileno())
        err = ConsoleOutput(sys.stderr.fileno())
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                status = runner.run(_linux(args, stop, out, err))
        except DenaliError as exc:
            _close(out, err, stop)
            print(f"denali: {exc}", file=sys.stderr)
            return EXIT_USAGE
        _close(out, err, stop)
        if stop.requested:
            stop.exit_now(EXIT_INTERRUPTED if status is None else status)
    return status


def _close(out: ConsoleOutput, err: ConsoleOutput, stop: StopSignals) -> None:
    """Write out what stdout and stderr still hold (briefly after a stop signal), then
    say what was dropped."""
    for o in (out, err):
        if stop.requested:
            o.close(idle_s=0.5)
        else:
            o.close(stopped=lambda: stop.requested)
    for o, name in ((out, "stdout"), (err, "stderr")):
        line = o.report()
        if line is not None:
            print(line.replace("stdout", name) if name == "stderr" else line, file=sys.stderr)
