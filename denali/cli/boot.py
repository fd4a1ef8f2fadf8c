"""``denali boot``: boot one or more VMs from an image and stream their consoles.

Exit statuses: with one VM, the guest's terminate status (mod 256); with several, 0 if
every guest exited 0, else 1. A guest fault or kernel error: 125. Ctrl-C: 130 after a
clean shutdown. Usage and configuration errors: 2.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import signal
import sys
from typing import Any

from denali import metrics
from denali.cli.common import EXIT_FAULT, EXIT_INTERRUPTED, EXIT_USAGE
from denali.config import KernelConfig, parse_size
from denali.devices.disk import parse_disk_arg
from denali.errors import ConfigError, DenaliError, GuestFault, KernelInternalError, VmKilledError
from denali.kernel import Kernel
from denali.net.impair import LinkSpec
from denali.net.tap import TapPort
from denali.net.vxlan import VxlanPort
from denali.progress import BootProgress
from denali.vm import Vm


def add_parser(sub: Any) -> None:
    """Add the ``boot`` subcommand to the top-level subparsers."""
    b = sub.add_parser("boot", help="boot one or more VMs from an image and stream their consoles")
    b.add_argument("image", help="a built-in image name (see 'denali images') or an ELF path")
    b.add_argument("--count", "-n", type=int, default=1, help="number of VMs (default 1)")
    b.add_argument("--memory", "-m", default="16M", help="guest memory per VM (default 16M)")
    b.add_argument("--slice-us", type=int, default=KernelConfig.slice_us,
                   help=f"time slice in microseconds (default {KernelConfig.slice_us})")
    b.add_argument("--cmdline", "-c", default="",
                   help="guest command line; {i} becomes the VM's index (1..N), "
                        "{ip:BASE} the IPv4 address BASE + index")
    b.add_argument("--memory-budget", metavar="SIZE",
                   help="resident guest memory allowed (e.g. 2G); idle VMs beyond it are swapped out")
    b.add_argument("--swap-dir", metavar="DIR", help="where swap files go (default: a temporary directory)")
    b.add_argument("--workers", type=int, default=0,
                   help="run slices on N worker threads (0: on the event loop; 2 uses both cores)")
    b.add_argument("--net", action="append", default=[],
                   metavar="tap:NAME | vxlan:VNI@REMOTE[:PORT][,local=ADDR[:PORT]]",
                   help="join the virtual LAN to a Linux TAP device (created if absent) or to "
                        "other kernels / Linux vxlan devices over VXLAN (UDP 4789 by default)")
    b.add_argument("--link", action="append", default=[], metavar="[vms:|lan:|net:]SPEC",
                   help="impair links (seeded, netem-like), e.g. loss=5%%,delay=20ms,jitter=2ms,seed=1; "
                        "vms: each VM's cable (the default), net: each --net port's, lan: every port's "
                        "(see docs/networking.md)")
    b.add_argument("--mac-tag", type=int, help="second byte of the VMs' MACs, 0-255 (default random)")
    b.add_argument("--pcap", metavar="FILE", help="capture every frame on the virtual LAN to FILE (pcap)")
    b.add_argument("--disk", action="append", default=[],
                   metavar="[NAME=]PATH[:keep[=OVERLAY]|:discard|:ro|:rw]",
                   help="give every VM this disk (repeatable); {i} becomes the VM's index")
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show boot progress on stderr (default: with 100 or more VMs on a terminal)")
    b.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus text at /metrics and VM data at /vms.json (for denali top)")


_IP_FIELD = re.compile(r"\{ip:([0-9.]+)\}")


def _cmdline_for(template: str, index: int) -> str:
    """``{i}`` becomes the VM's index; ``{ip:BASE}`` the IPv4 address BASE + index."""
    def ip(m: re.Match[str]) -> str:
        try:
            return str(ipaddress.IPv4Address(m.group(1)) + index)
        except ValueError:
            raise DenaliError(f"--cmdline: {m.group(0)} is not a base address with room for "
                              f"VM {index}") from None
    return _IP_FIELD.sub(ip, template.replace("{i}", str(index)))


async def _boot(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise DenaliError("--count must be at least 1")
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    out = sys.stdout.buffer
    multi = args.count > 1

    def sink_for(index: int) -> object:
        if not multi:
            def write(data: bytes) -> None:
                out.write(data)
                out.flush()
            return write
        partial = bytearray()

        def write_prefixed(data: bytes) -> None:
            partial.extend(data)
            *lines, rest = partial.split(b"\n")
            for line in lines:
                out.write(b"[vm%d] %s\n" % (index, line))
            partial[:] = rest
            out.flush()
        return write_prefixed

    budget = parse_size(args.memory_budget) if args.memory_budget else None
    config = KernelConfig(slice_us=args.slice_us, workers=args.workers, memory_budget=budget,
                          swap_dir=args.swap_dir, mac_tag=args.mac_tag)
    async with Kernel(config) as k:
        if args.pcap:
            await k.switch.capture(args.pcap)
        metrics_server = None
        if args.metrics:
            host, _, port = args.metrics.rpartition(":")
            try:
                metrics_server = await metrics.serve(k, host or "127.0.0.1", int(port))
            except (OSError, ValueError) as exc:
                raise DenaliError(f"--metrics {args.metrics}: {exc}") from None
        links = _parse_links(args.link)
        if "lan" in links:
            k.switch.set_link(links["lan"])
        taps: list[TapPort | VxlanPort] = []
        for spec in args.net:
            kind, _, rest = spec.partition(":")
            if kind == "tap" and rest:
                tp = TapPort(rest)
                tp.open()
                taps.append(tp)
                k.switch.attach(tp)
            elif kind == "vxlan" and rest:
                vx = VxlanPort.parse(rest)
                await vx.open()
                taps.append(vx)
                k.switch.attach(vx)
            else:
                raise DenaliError(f"--net {spec!r}: expected tap:NAME or vxlan:VNI@REMOTE[:PORT]")
            if "net" in links:
                taps[-1].set_link(links["net"])
        show = args.progress if args.progress is not None else args.count >= 100 and sys.stderr.isatty()
        progress = BootProgress(args.count, sys.stderr) if show else None
        shown = asyncio.ensure_future(progress.run()) if progress is not None else None
        vms = []
        try:
            for i in range(1, args.count + 1):
                if interrupted.is_set():
                    await k.close()
                    return EXIT_INTERRUPTED
                vm = await k.spawn(args.image, memory=args.memory, cmdline=_cmdline_for(args.cmdline, i),
                                   disks=[parse_disk_arg(d, index=i) for d in args.disk],
                                   console=sink_for(i), link=links.get("vms"))  # type: ignore[arg-type]
                vms.append(vm)
                if progress is not None:
                    progress.add(vm)
                await asyncio.sleep(0)  # let the VMs spawned so far start, and the progress show
        finally:
            if progress is not None and len(vms) < args.count:
                progress.close()
        waiter = asyncio.ensure_future(asyncio.gather(*(_outcome(vm) for vm in vms)))
        stopper = asyncio.ensure_future(interrupted.wait())
        pending: set[asyncio.Future[Any]] = {waiter, stopper}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if progress is not None and shown is not None:
            progress.close()
            await shown
        if not waiter.done():
            await k.close()
            await waiter
            stopper.cancel()
            return EXIT_INTERRUPTED
        stopper.cancel()
        codes = waiter.result()
        for port in taps:
            port.close()
        if metrics_server is not None:
            metrics_server.close()
    if not multi:
        return codes[0]
    return 0 if all(c == 0 for c in codes) else 1


async def _outcome(vm: Vm) -> int:
    try:
        return await vm.wait() & 0xFF
    except GuestFault as exc:
        print(f"denali: {exc.report.details()}", file=sys.stderr)
        return EXIT_FAULT
    except KernelInternalError as exc:
        print(f"denali: {exc}", file=sys.stderr)
        return EXIT_FAULT
    except VmKilledError:
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace) -> int:
    """Run ``denali boot`` (owns the event loop: uvloop)."""
    try:
        import uvloop
        return uvloop.run(_boot(args))
    except DenaliError as exc:
        print(f"denali: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


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
