"""``denali boot``: boot one or more VMs from an image and stream their consoles.

Exit statuses: 125 if any VM faulted (or a kernel error or a monitor, such as a
``--policy`` or a debugger's kill, stopped it), whatever the others
did; otherwise, with one VM, the guest's terminate status (mod 256), and with several,
0 if every guest exited 0, else 1. Ctrl-C or SIGTERM: 130 after a clean shutdown,
whatever the boot was waiting on (a second signal, or a shutdown unfinished after
``SHUTDOWN_GRACE_S``, ends the process at once: see ``denali.cli.signals``).
Usage and configuration errors: 2.

Console output goes to stdout through ``denali.cli.output``: the VMs never wait for it;
what a slow or closed stdout cannot take is dropped and counted on stderr at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from denali.cli import lan
from denali.cli.common import (
    EXIT_FAULT,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    host_port,
    host_port_any,
    log_options,
    positive_float,
)
from denali.cli.output import ConsoleOutput, PrefixedSink
from denali.cli.signals import StopSignals
from denali.config import KernelConfig, parse_size
from denali.devices.disk import parse_disk_arg
from denali.errors import (
    ConfigError,
    DenaliError,
    DiskError,
    GuestFault,
    KernelInternalError,
    SwapError,
    VmKilledError,
)
from denali.host import MemberLink, ToldHost, die_with_parent, lan_works
from denali.kernel import Kernel
from denali.monitor.base import Monitor
from denali.monitor.gdb import GdbStub
from denali.monitor.policy import Policy, PolicySpec, load_policy
from denali.monitor.tracer import Tracer, TraceWriter, parse_kinds
from denali.net.impair import LinkSpec
from denali.net.tap import TapPort
from denali.net.vxlan import VxlanPort
from denali.vm import Vm, VmState

if TYPE_CHECKING:  # rich: imported where a progress display is shown
    from denali.progress import BootCount, BootProgress


log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    """Add the ``boot`` subcommand to the top-level subparsers."""
    b = sub.add_parser(
        "boot",
        help="boot one or more VMs from an image and stream their consoles",
        parents=[log_options(top=False)],
    )
    b.add_argument("image", help="a built-in image name (see 'denali images') or an ELF path")
    b.add_argument("--count", "-n", type=int, default=1, help="number of VMs (default 1)")
    b.add_argument("--memory", "-m", default="16M", help="guest memory per VM (default 16M)")
    b.add_argument(
        "--child-memory",
        default="0",
        metavar="SIZE",
        help="memory each VM's child VMs (and theirs) may hold in all, e.g. 32M "
        "(default 0: a VM may create no children; docs/virtual-architecture.md)",
    )
    b.add_argument(
        "--slice-us",
        type=int,
        default=KernelConfig.slice_us,
        help=f"time slice in microseconds (default {KernelConfig.slice_us})",
    )
    b.add_argument(
        "--cmdline",
        "-c",
        default="",
        help="guest command line; {i} becomes the VM's index (1..N), {ip:BASE} the IPv4 address BASE + index",
    )
    b.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="resident guest memory allowed (e.g. 2G); idle VMs beyond it are swapped out",
    )
    b.add_argument("--swap-dir", metavar="DIR", help="where swap files go (default: a temporary directory)")
    b.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run slices on N worker threads (0: on the event loop; 2 uses both cores)",
    )
    b.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="tap:NAME[,host=ADDR/PREFIX] | vxlan:VNI@REMOTE[:PORT][,local=ADDR[:PORT]]",
        help="join the virtual LAN to a Linux TAP device (created if absent; host= gives "
        "the host side that address and brings it up) or to other kernels / Linux "
        "vxlan devices over VXLAN (UDP 4789 by default)",
    )
    b.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="[vms:|lan:|net:]SPEC",
        help="impair links (seeded, netem-like), e.g. loss=5%%,delay=20ms,jitter=2ms,seed=1; "
        "vms: each VM's cable (the default), net: each --net port's, lan: every port's "
        "(see docs/networking.md)",
    )
    b.add_argument("--mac-tag", type=int, help="second byte of the VMs' MACs, 0-255 (default random)")
    b.add_argument("--pcap", metavar="FILE", help="capture every frame on the virtual LAN to FILE (pcap)")
    b.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="[NAME=]PATH[:keep[=OVERLAY]|:discard|:ro|:rw]",
        help="give every VM this disk (repeatable); {i} becomes the VM's index",
    )
    b.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show boot progress on stderr (default: with 100 or more VMs on a terminal)",
    )
    b.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=host_port,
        help="serve Prometheus text at /metrics and VM data at /vms.json (for denali top)",
    )
    # the control API (docs/api-http.md)
    b.add_argument(
        "--api",
        metavar="PATH",
        help="serve the control API (HTTP + JSON) on the Unix socket PATH, for denali ctl "
        "and denali top; the kernel then runs until stopped, and --count may be 0",
    )
    b.add_argument(
        "--api-mode",
        metavar="OCTAL",
        type=_octal_mode,
        default=0o600,
        help="permissions of the API socket (default 600: its owner only)",
    )

    # ---- one host of several kernels (docs/host.md) ----
    h = b.add_argument_group("several kernels as one host (docs/host.md)")
    h.add_argument(
        "--kernels",
        type=_kernels,
        metavar="N|auto",
        help="run N kernel processes as one host (auto: one per core): the VMs spread over "
        "them, one LAN, one --api and --metrics over all (default: one per core, at most "
        "one per VM of --count; 1, this process only, with --trace or --pcap, which write "
        "one file)",
    )
    h.add_argument(
        "--restart-lost",
        action="store_true",
        help="with --kernels: a VM whose kernel died is restored from its last snapshot "
        "(taken through the API, or by --checkpoint) on another kernel",
    )
    h.add_argument(
        "--checkpoint",
        metavar="SECONDS",
        type=positive_float,
        help="with --kernels: snapshot every running VM this often (pause, snapshot, resume) "
        "for --restart-lost",
    )
    h.add_argument(
        "--balance",
        action="store_true",
        help="with --kernels: move a VM (live migration) from a kernel that stays much busier than another",
    )
    h.add_argument(
        "--host-lan",
        metavar="VNI[@PEER[:PORT][+PEER...]][,local=ADDR[:PORT]]",
        help="with --kernels: the LAN between the kernels (VXLAN; default VNI 4242 on 127.0.0.1, "
        "free ports): kernel J binds ADDR:PORT+J and reaches the PEERs (other machines' kernels, "
        "a Linux vxlan device) directly (docs/host.md)",
    )
    h.add_argument("--member", type=_member, help=argparse.SUPPRESS)
    h.add_argument("--member-fd", type=int, help=argparse.SUPPRESS)
    h.add_argument("--member-lan", help=argparse.SUPPRESS)

    # ---- monitors (docs/monitors.md) ----
    m = b.add_argument_group("monitors (docs/monitors.md)")
    m.add_argument(
        "--trace",
        metavar="FILE",
        help="write every hypercall, interrupt, fault and disk request of every VM to FILE "
        "as JSON lines (the schema is in docs/monitors.md)",
    )
    m.add_argument(
        "--trace-filter",
        metavar="KINDS",
        default="hypercall,interrupt,fault,disk",
        help="what --trace records: a comma list of hypercall, interrupt, fault, disk, "
        "frame_out, frame_in, frame (both), all (default: hypercall,interrupt,fault,disk)",
    )
    m.add_argument(
        "--trace-frame-bytes",
        metavar="N",
        type=int,
        default=64,
        help="bytes of each traced frame recorded as hex (default 64)",
    )
    m.add_argument(
        "--policy",
        metavar="FILE",
        help="enforce a policy on every VM: allowed hypercalls, NIC and disk limits "
        "(TOML, or JSON when FILE ends in .json)",
    )
    m.add_argument(
        "--gdb",
        metavar="HOST:PORT",
        type=host_port_any,
        help="serve the GDB remote protocol: VM i (1..N) on PORT+i-1 (port 0: any free "
        "ports, printed on stderr)",
    )
    m.add_argument(
        "--gdb-wait",
        action="store_true",
        help="with --gdb: hold each VM at its entry point until gdb continues it",
    )


def _kernels(text: str) -> int:
    """``--kernels``: a number from 1 to 64, or ``auto`` (one per core)."""
    if text == "auto":
        return max(1, min(64, len(os.sched_getaffinity(0))))
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of kernels from 1 to 64 (or auto)")
    return int(text)


def default_kernels(args: argparse.Namespace) -> int:
    """How many kernels a boot without ``--kernels`` runs: one per core the process may
    use, at most one per VM of ``--count`` (all of them for an API-only host, ``--count
    0``); one for a member of a host, with ``--trace`` or ``--pcap`` (one file each,
    written by one kernel), and where the kernels' LAN over 127.0.0.1 would not work (a
    namespace whose loopback is down)."""
    if args.member is not None or args.trace or args.pcap:
        return 1
    cores = max(1, min(64, len(os.sched_getaffinity(0))))
    n = cores if args.count < 1 else min(cores, args.count)
    if n > 1 and not args.host_lan and not lan_works("127.0.0.1"):
        log.info("one kernel, not %d: 127.0.0.1 carries no datagrams here (loopback down)", n)
        return 1
    return n


def _member(text: str) -> tuple[int, int]:
    """``--member J/N`` (set by the host for its member kernels)."""
    j, _, n = text.partition("/")
    if not (j.isdigit() and n.isdigit() and 0 <= int(j) < int(n) <= 64):
        raise argparse.ArgumentTypeError(f"{text!r} is not J/N")
    return int(j), int(n)


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode in octal (e.g. 600)")
    return mode


_IP_FIELD = re.compile(r"\{ip:([^{}]*)\}")


def _cmdline_for(template: str, index: int) -> str:
    """``{i}`` becomes the VM's index; ``{ip:BASE}`` the IPv4 address BASE + index
    (``DenaliError`` when BASE is not an IPv4 address or BASE + index is past the last)."""

    def ip(m: re.Match[str]) -> str:
        try:
            base = ipaddress.IPv4Address(m.group(1))
        except ValueError:
            raise DenaliError(f"--cmdline: in {m.group(0)}, {m.group(1)!r} is not an IPv4 address") from None
        try:
            return str(base + index)
        except ValueError:
            raise DenaliError(
                f"--cmdline: {m.group(0)} is not a base address with room for VM {index}"
            ) from None

    return _IP_FIELD.sub(ip, template.replace("{i}", str(index)))


def _check(args: argparse.Namespace, config: KernelConfig, max_engines: int) -> None:
    """Refuse bad values before anything boots (``DenaliError``): the count, the command
    line of the first and the last VM, the disk specs."""
    if args.count < (0 if args.api else 1):
        raise DenaliError("--count must be at least 1 (0 only with --api)")
    if args.count > config.max_vms:
        raise DenaliError(f"--count {args.count} is above the kernel's limit of {config.max_vms:,} VMs")
    if config.memory_budget is None and args.count > max_engines:
        raise DenaliError(
            f"--count {args.count}: at most {max_engines:,} VMs fit in this process "
            "without swapping (vm.max_map_count); give a --memory-budget"
        )
    if args.gdb_wait and not args.gdb:
        raise DenaliError("--gdb-wait needs --gdb HOST:PORT")
    if args.gdb and args.gdb[1] and args.gdb[1] + args.count - 1 > 65535:
        raise DenaliError(f"--gdb: ports {args.gdb[1]}..{args.gdb[1] + args.count - 1} go past 65535")
    if args.trace_frame_bytes < 0:
        raise DenaliError("--trace-frame-bytes must be 0 or more")
    parse_kinds(args.trace_filter)
    for index in sorted({1, max(1, args.count)}):
        _cmdline_for(args.cmdline, index)
        for d in args.disk:
            parse_disk_arg(d, index=index)


async def _boot(args: argparse.Namespace, stop: StopSignals, out: ConsoleOutput) -> int:
    """Boot, wait for every VM, close; EXIT_INTERRUPTED when ``stop`` signalled first.
    As a member of a host, a failure is told to the host (which prints it once for all
    its kernels) and raised as ``ToldHost``."""
    stopping = asyncio.Event()
    stop.bind(asyncio.get_running_loop(), stopping.set)
    link: MemberLink | None = None
    if args.member is not None:  # a kernel of a multi-kernel host (denali.host)
        if args.member_fd is None or not args.api:
            raise DenaliError("--member needs --member-fd and --api")
        link = MemberLink(args.member_fd)
        await link.open()
        gone = asyncio.ensure_future(link.gone.wait())  # the host went away: stop cleanly
        gone.add_done_callback(lambda _: stopping.set())
    try:
        return await _boot_kernel(args, stopping, out, link)
    except DenaliError as exc:
        if link is None:
            raise
        link.send({"failed": str(exc)})
        await link.close()
        raise ToldHost(str(exc)) from None
    finally:
        if link is not None:
            gone.cancel()
            if not link.gone.is_set():  # the host prints one line for all its kernels
                await asyncio.to_thread(out.close, idle_s=0.5)
                link.send({"console": {"dropped": out.dropped, "closed": out.broken}})
            await link.close()


async def _boot_kernel(
    args: argparse.Namespace, stopping: asyncio.Event, out: ConsoleOutput, link: MemberLink | None
) -> int:
    budget = parse_size(args.memory_budget) if args.memory_budget else None
    j, n = args.member or (0, 1)
    config = KernelConfig(
        slice_us=args.slice_us,
        workers=args.workers,
        memory_budget=budget,
        swap_dir=args.swap_dir,
        mac_tag=args.mac_tag,
        id_start=j + 1,
        id_step=n,
    )
    async with Kernel(config) as k:
        _check(args, config, k.max_engines)
        if link is not None:
            k.watch(_MemberWatch(link, out).on_vm)
        # The whole boot is one task, so a signal stops it whatever it waits on (a spawn,
        # a capture file being opened, the VMs); the kernel then closes every VM.
        body = asyncio.ensure_future(_run(k, args, out, link))
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
    k: Kernel, args: argparse.Namespace, out: ConsoleOutput, link: MemberLink | None = None
) -> int:
    """Set up the LAN's extras, spawn the VMs, wait for them; the exit status. As a
    member of a host (``link``): spawn this kernel's share of the VMs (index j + 1 step
    N), say ready, and serve until stopped (the host gathers the outcomes)."""
    if args.pcap:
        await k.switch.capture(args.pcap)
    ports: list[TapPort | VxlanPort] = []
    ports_internal: list[VxlanPort] = []
    policy: PolicySpec | None = load_policy(args.policy) if args.policy else None
    trace: TraceWriter | None = None
    stubs: list[GdbStub] = []
    metrics_server = None
    api_server = None
    progress: BootProgress | None = None
    counted: BootProgress | BootCount | None = None
    shown = None
    vms: list[tuple[Vm, PrefixedSink]] = []
    j, n = args.member or (0, 1)
    try:
        if args.metrics:
            host, port = args.metrics
            from denali import metrics  # aiohttp and prometheus_client: loaded only when served

            try:
                metrics_server = await metrics.serve(k, host, port)
            except (OSError, ValueError) as exc:
                raise DenaliError(f"--metrics {host}:{port}: {exc}") from None
        links = _parse_links(args.link)
        if "lan" in links:
            k.switch.set_link(links["lan"])
        if args.api:
            from denali import api

            api_server = await api.serve(
                k, args.api, mode=args.api_mode, monitors=_api_monitors(args, lambda: trace, policy)
            )
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
            if "net" in links:
                ports[-1].set_link(links["net"])
        if args.member_lan:  # the host's LAN between its kernels (not reported: it is internal)
            mesh = VxlanPort.parse(args.member_lan.removeprefix("vxlan:"))
            await mesh.open()
            ports_internal.append(mesh)
            k.switch.attach(mesh)
        if args.trace:
            trace = TraceWriter(args.trace, parse_kinds(args.trace_filter))
            await trace.open()
        show = args.progress if args.progress is not None else args.count >= 100 and sys.stderr.isatty()
        if show and link is not None:  # the host shows its members' sums
            from denali.progress import BootCount

            counted = BootCount()
            shown = asyncio.ensure_future(_tell_progress(link, counted, len(range(j + 1, args.count + 1, n))))
        elif show:
            from denali.progress import BootProgress as _Progress  # rich: loaded only when shown

            progress = _Progress(args.count, sys.stderr)
            counted = progress
            shown = asyncio.ensure_future(progress.run())
        for i in range(j + 1, args.count + 1, n):
            sink = out.sink_for(i if args.count > 1 else None)
            monitors = await _monitors_for(i, args, trace, policy, stubs)
            vm = await k.spawn(
                args.image,
                memory=args.memory,
                cmdline=_cmdline_for(args.cmdline, i),
                disks=[parse_disk_arg(d, index=i) for d in args.disk],
                console=sink,
                link=links.get("vms"),
                monitors=monitors,
                child_memory=args.child_memory,
            )
            vms.append((vm, sink))
            if i == 1:  # where the VMs are and how to reach them, before they print
                lan.report(
                    [_cmdline_for(args.cmdline, j) for j in range(1, args.count + 1)], ports, sys.stderr
                )
            if counted is not None:
                counted.add(vm)
            await asyncio.sleep(0)  # let the VMs spawned so far start, and the progress show
        if link is not None:  # the host gathers every VM's outcome through the link
            link.send({"ready": {"pid": os.getpid(), "vms": len(vms)}})
            await asyncio.Event().wait()
        codes = await asyncio.gather(*(_outcome(vm, sink) for vm, sink in vms))
        if api_server is not None:  # VMs come and go through the API until a stop signal
            await asyncio.Event().wait()
    finally:
        if progress is not None:
            progress.close()
        if shown is not None:
            if progress is None:
                shown.cancel()
            await asyncio.gather(shown, return_exceptions=True)
        for p in [*ports, *ports_internal]:
            p.close()
        if metrics_server is not None:
            await metrics_server.close()
        if api_server is not None:
            await api_server.close()
        for stub in stubs:
            await stub.aclose()
        if trace is not None:
            await trace.aclose()
            if trace.dropped or trace.error:
                why = f" ({trace.error.strerror or trace.error})" if trace.error else ""
                print(
                    f"denali: trace {trace.path}: {trace.records:,} records, {trace.dropped:,} dropped{why}",
                    file=sys.stderr,
                )
    return _status(codes)


def _api_monitors(
    args: argparse.Namespace, trace_of: Callable[[], TraceWriter | None], policy: PolicySpec | None
) -> Callable[[], list[Monitor]] | None:
    """The monitors of every VM the control API starts: the tracer (``trace_of()``, opened
    after the API) and the policy, as for the VMs on the command line (no debugger: its
    ports are the command line's)."""
    if not args.trace and policy is None:
        return None

    def make() -> list[Monitor]:
        made: list[Monitor] = []
        trace = trace_of()
        if trace is not None:
            made.append(Tracer(trace, frame_bytes=args.trace_frame_bytes))
        if policy is not None:
            made.append(Policy(policy))
        return made

    return make


async def _monitors_for(
    index: int,
    args: argparse.Namespace,
    trace: TraceWriter | None,
    policy: PolicySpec | None,
    stubs: list[GdbStub],
) -> list[Monitor]:
    """VM ``index``'s monitor stack, nearest the VM first: the gdb stub (it sees the
    guest's own faults), the tracer (it records what the guest asked and what it got),
    the policy (nearest the kernel)."""
    monitors: list[Monitor] = []
    if args.gdb:
        host, port = args.gdb
        stub = GdbStub(host, port + index - 1 if port else 0, wait=args.gdb_wait)
        await stub.start()
        stubs.append(stub)
        print(f"denali: gdb: VM {index} listening on {host}:{stub.port}", file=sys.stderr, flush=True)
        monitors.append(stub)
    if trace is not None:
        monitors.append(Tracer(trace, frame_bytes=args.trace_frame_bytes))
    if policy is not None:
        monitors.append(Policy(policy))
    return monitors


async def _tell_progress(link: MemberLink, counted: BootCount, mine: int) -> None:
    """A member's share of a boot's progress, told to the host (which shows the sum) every
    0.2 s while it changes, until all ``mine`` VMs started."""
    told = (-1, -1)
    while True:
        now = counted.counts()
        if now != told:
            link.send({"progress": {"spawned": now[0], "started": now[1]}})
            told = now
        if now == (mine, mine):
            return
        await asyncio.sleep(0.2)


class _MemberWatch:
    """A member kernel's watch over each VM it publishes (``Kernel.watch``): a console
    sink on stdout for a VM that has none (migrated in, restored or started through the
    API), ``up`` to the host, and when the VM ends its outcome (``end``), or ``moved``
    when it went to another kernel. Child VMs are their parent's business."""

    def __init__(self, link: MemberLink, out: ConsoleOutput) -> None:
        self.link = link
        self.out = out
        self.tasks: set[asyncio.Task[None]] = set()

    def on_vm(self, vm: Vm) -> None:
        if vm.group != vm.id:
            return
        sink = vm.console.sink
        if not isinstance(sink, PrefixedSink):
            sink = self.out.sink_for(vm.id)
            vm.console.sink = sink
        self.link.send(
            {
                "up": {
                    "id": vm.id,
                    "image": vm.image.name,
                    "mac": ":".join(f"{b:02x}" for b in vm.mac),
                    "cmdline": vm.cmdline,
                    "memory": vm.mem_size,
                }
            }
        )
        task = asyncio.ensure_future(self._end(vm, sink))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _end(self, vm: Vm, sink: PrefixedSink) -> None:
        code = await _outcome(vm, sink)
        if vm.state is VmState.MIGRATED:
            self.link.send({"moved": vm.id})
        else:
            self.link.send({"end": {"id": vm.id, "code": code, "state": vm.state.value}})


def _status(outcomes: list[int | None]) -> int:
    """The exit status of a boot from each VM's outcome (None: it faulted or failed)."""
    if any(c is None for c in outcomes):
        return EXIT_FAULT
    if len(outcomes) == 1:
        return outcomes[0] or 0
    return 0 if all(c == 0 for c in outcomes) else 1


async def _outcome(vm: Vm, sink: PrefixedSink) -> int | None:
    """The guest's exit status (mod 256); None when it faulted or a kernel error stopped it
    (reported on stderr); 130 when the host stopped it. Its last console line is written
    out first, even without a newline."""
    try:
        try:
            status = await vm.wait()
        finally:
            sink.finish()
        return status & 0xFF
    except GuestFault as exc:
        print(f"denali: {exc.report.details()}", file=sys.stderr)
        return None
    except (KernelInternalError, SwapError) as exc:
        print(f"denali: {exc}", file=sys.stderr)
        return None
    except DiskError as exc:  # the guest ended, but a kept overlay could not be saved
        print(f"denali: {exc}", file=sys.stderr)
        return 1
    except VmKilledError as exc:
        if vm.stopped_by is not None:  # a monitor stopped it (a policy, a debugger's kill)
            print(f"denali: {exc}", file=sys.stderr)
            return None
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace) -> int:
    """Run ``denali boot`` (owns the event loop: uvloop, the stop signals and stdout)."""
    import uvloop

    if args.kernels is None:
        args.kernels = default_kernels(args)
    if args.member is None and (
        args.kernels > 1 or args.restart_lost or args.checkpoint or args.balance or args.host_lan
    ):
        from denali.cli import host as host_cli

        return host_cli.run(args)
    if args.member is not None:
        die_with_parent()
    if args.metrics or args.api:  # room for both endpoints' connections
        from denali.endpoint import Limits, raise_fd_limit  # aiohttp: only when served

        raise_fd_limit(2 * Limits().max_connections + 1024)
    with StopSignals() as stop:
        out = ConsoleOutput(sys.stdout.fileno())
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                status = runner.run(_boot(args, stop, out))
                if stop.requested:  # shut down cleanly: threads still stuck are not waited for
                    _finish_output(out, stop, report=args.member is None)
                    stop.exit_now(status)
        except DenaliError as exc:
            if not isinstance(exc, ToldHost):
                print(f"denali: {exc}", file=sys.stderr)
            status = EXIT_USAGE
        _finish_output(out, stop, report=args.member is None)
        if stop.requested:
            stop.exit_now(EXIT_INTERRUPTED)
    return status


def _finish_output(out: ConsoleOutput, stop: StopSignals, report: bool = True) -> None:
    """Write out what stdout still holds (briefly after a stop signal; a signal while
    waiting ends the wait), then say what was dropped (unless ``report`` is False: a
    member kernel told its host)."""
    if stop.requested:
        out.close(idle_s=0.5)
    else:
        out.close(stopped=lambda: stop.requested)
    line = out.report() if report else None
    if line is not None:
        print(line, file=sys.stderr)


def _parse_links(specs: list[str]) -> dict[str, LinkSpec]:
    """``--link`` values by target (vms, net, lan); ``ConfigError`` on a bad spec."""
    out: dict[str, LinkSpec] = {}
    for text in specs:
        target, sep, rest = text.partition(":")
        if sep and target in ("vms", "net", "lan"):
            body = rest
        else:
            target, body = "vms", text
        if target in out:
            raise ConfigError(f"--link {target}: given twice")
        out[target] = LinkSpec.parse(body)
    return out
