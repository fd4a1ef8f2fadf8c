"""``denali boot --kernels N``: one host of N kernel processes (``denali.host``).

This process runs no VM: it starts N members, each a ``denali boot`` of its own with
this boot's options (``--member J/N``: kernel J boots VMs J+1, J+1+N, ... of
``--count``), serves the one ``--api`` and ``--metrics`` for all of them
(``denali.host_api``), and ends as ``denali boot`` does: without ``--api``, once every
VM has ended, with the same exit statuses (125 if a VM faulted, was stopped by a
monitor or was lost with its kernel; else the one VM's status, or 0/1); with ``--api``
on a stop signal. Ctrl-C or SIGTERM stops every member and exits 130. A member that
fails to start ends the host with that member's status (its message is on stderr).
The members write the VMs' consoles to this process's stdout and stderr themselves;
this process shows the boot's progress (the members' sums) and the one line saying how
many console bytes were dropped, summed over the members.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from denali import host_api
from denali.cli.common import EXIT_FAILED, EXIT_FAULT, EXIT_INTERRUPTED, EXIT_USAGE
from denali.cli.output import dropped_line
from denali.cli.signals import StopSignals
from denali.config import KernelConfig, parse_size
from denali.endpoint import Endpoint
from denali.errors import ConfigError, DenaliError
from denali.host import BalancePolicy, Host, HostConfig, HostError, HostVm, MemberPlan
from denali.images import resolve
from denali.monitor.policy import load_policy
from denali.net.vxlan import VXLAN_PORT, VxlanPort


def _refuse(args: argparse.Namespace) -> None:
    """Options a multi-kernel host does not take (yet): one clear line each."""
    if args.kernels < 2:
        raise DenaliError("--restart-lost, --checkpoint, --balance and --host-lan need --kernels 2 or more")
    for flag, value in (("--pcap", args.pcap), ("--trace", args.trace)):
        if value:
            raise DenaliError(
                f"{flag} is not supported with --kernels {args.kernels} (each kernel would need its own file)"
            )
    if args.count < (0 if args.api else 1):
        raise DenaliError("--count must be at least 1 (0 only with --api)")
    if args.gdb_wait and not args.gdb:
        raise DenaliError("--gdb-wait needs --gdb HOST:PORT")


def parse_host_lan(spec: str) -> tuple[int, tuple[str, int], list[tuple[str, int]]]:
    """``--host-lan VNI[@PEER[:PORT][+PEER...]][,local=ADDR[:PORT]]``: (VNI, the members'
    address and first port (0: free ports), the peers); ``ConfigError`` when malformed."""
    main, _, opts = spec.partition(",")
    vni_text, at, peers_text = main.partition("@")
    try:
        probe = VxlanPort.parse(f"{vni_text}@{peers_text or '127.0.0.1'}" + (f",{opts}" if opts else ""))
    except ConfigError as exc:
        raise ConfigError(f"--host-lan {spec}: {str(exc).partition(': ')[2] or exc}") from None
    local = probe.local if opts else ("127.0.0.1", 0)
    if opts and local[1] == VXLAN_PORT and ":" not in opts.partition("=")[2]:
        local = (local[0], 0)
    return probe.vni, local, probe.remotes if at and peers_text else []


def member_command(args: argparse.Namespace, mac_tag: int, plan: MemberPlan) -> list[str]:
    """The ``denali boot`` command line of member ``plan.index``: this boot's options,
    its share of the VMs, its API socket, the host's LAN (and, for kernel 0, the LAN's
    ports to the world outside)."""
    cmd = [sys.executable, "-m", "denali", "boot", args.image]
    cmd += [
        "--count",
        str(args.count),
        "--memory",
        str(args.memory),
        "--child-memory",
        str(args.child_memory),
    ]
    cmd += ["--slice-us", str(args.slice_us), "--cmdline", args.cmdline, "--workers", str(args.workers)]
    cmd += [
        "--mac-tag",
        str(mac_tag),
        "--api",
        plan.api,
        "--progress" if _shows_progress(args) else "--no-progress",
    ]
    cmd += ["--member", f"{plan.index}/{plan.kernels}", "--member-fd", str(plan.fd)]
    if args.memory_budget:  # the host's budget, shared equally by its kernels
        cmd += ["--memory-budget", str(max(2 << 20, parse_size(args.memory_budget) // plan.kernels))]
    if args.swap_dir:
        cmd += ["--swap-dir", args.swap_dir]
    if plan.vxlan:
        cmd += ["--member-lan", plan.vxlan]
    if plan.index == 0:
        for spec in args.net:
            cmd += ["--net", spec]
    for spec in args.link:
        cmd += ["--link", spec]
    for spec in args.disk:
        cmd += ["--disk", spec]
    if args.policy:
        cmd += ["--policy", os.path.abspath(args.policy)]
    if args.gdb:
        cmd += ["--gdb", f"{args.gdb[0]}:{args.gdb[1]}"]
        if args.gdb_wait:
            cmd.append("--gdb-wait")
    level = getattr(args, "log_level", None)
    if level:
        cmd += ["--log-level", level]
    elif getattr(args, "quiet", False):
        cmd.append("-q")
    elif getattr(args, "verbose", 0):
        cmd.append("-" + "v" * int(args.verbose))
    return cmd


def _shows_progress(args: argparse.Namespace) -> bool:
    """Whether the host shows the boot's progress on stderr (as ``denali boot`` does: with
    ``--progress``, or 100 VMs or more on a terminal); its members then tell theirs."""
    return args.progress if args.progress is not None else args.count >= 100 and sys.stderr.isatty()


def _status(vms: list[HostVm]) -> int:
    """``denali boot``'s exit status from the host's VMs (a lost VM counts as failed)."""
    outcomes = [v.code if v.state == "ended" else None for v in vms]
    if any(c is None for c in outcomes) or not outcomes:
        return EXIT_FAULT if outcomes else 0
    if len(outcomes) == 1:
        return outcomes[0] or 0
    return 0 if all(c == 0 for c in outcomes) else 1


async def _serve(args: argparse.Namespace, stop: StopSignals) -> int:
    stopping = asyncio.Event()
    stop.bind(asyncio.get_running_loop(), stopping.set)
    mac_tag = args.mac_tag if args.mac_tag is not None else os.urandom(1)[0]
    vni, local, peers = parse_host_lan(args.host_lan or "4242")
    config = HostConfig(
        kernels=args.kernels,
        vni=vni,
        lan_local=local,
        lan_peers=peers,
        command=lambda plan: member_command(args, mac_tag, plan),
        restart_lost=args.restart_lost,
        checkpoint_s=args.checkpoint,
        balance=BalancePolicy() if args.balance else None,
    )
    host = Host(config)
    endpoints: list[Endpoint] = []
    body = asyncio.ensure_future(_run(host, args, endpoints))
    stopper = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({body, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not body.done():
            body.cancel()
        await asyncio.gather(body, return_exceptions=True)
        for e in endpoints:
            await e.close()
        await host.close()
        line = dropped_line(host.console_dropped, host.console_closed)
        if line is not None:
            print(line, file=sys.stderr)
    if body.cancelled():
        return EXIT_INTERRUPTED
    return body.result()


async def _run(host: Host, args: argparse.Namespace, endpoints: list[Endpoint]) -> int:
    if args.api:  # first: a socket in use is one line before any kernel starts
        endpoints.append(await host_api.serve(host, args.api, mode=args.api_mode))
    if args.metrics:
        address, port = args.metrics
        try:
            endpoints.append(await host_api.serve_metrics(host, address, port))
        except OSError as exc:
            raise DenaliError(f"--metrics {address}:{port}: {exc.strerror or exc}") from None
    progress = None
    shown = None
    if _shows_progress(args) and args.count > 0:
        from denali.progress import BootProgress  # rich: loaded only when shown

        progress = BootProgress(args.count, sys.stderr, counts=host.boot_counts)
        shown = asyncio.ensure_future(progress.run())
    try:
        await host.start()
        if args.api:
            await asyncio.Event().wait()
        vms = await host.wait_vms()
    finally:
        if progress is not None and shown is not None:
            progress.close()
            await asyncio.gather(shown, return_exceptions=True)
    for v in vms:
        if v.state == "lost":
            print(f"denali: VM {v.id} was lost with its kernel", file=sys.stderr)
    return _status(vms)


def run(args: argparse.Namespace) -> int:
    """Run ``denali boot --kernels N`` (N >= 2, or the default of one per core); see the
    module docstring."""
    import uvloop

    from denali.endpoint import Limits, raise_fd_limit

    try:
        _refuse(args)
        if args.host_lan:
            parse_host_lan(args.host_lan)
        resolve(args.image)  # a bad image is one line here, not one per kernel
        KernelConfig(slice_us=args.slice_us, workers=args.workers)
        if args.policy:
            load_policy(args.policy)
    except DenaliError as exc:
        print(f"denali: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.metrics or args.api:
        raise_fd_limit(2 * Limits().max_connections + 1024)
    with StopSignals() as stop:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                status = runner.run(_serve(args, stop))
        except HostError as exc:  # a kernel failed to start: what it said, once
            print(f"denali: {exc}", file=sys.stderr)
            status = exc.status if exc.status is not None else EXIT_FAILED
        except DenaliError as exc:
            print(f"denali: {exc}", file=sys.stderr)
            status = EXIT_USAGE
        if stop.requested:
            stop.exit_now(EXIT_INTERRUPTED)
    return status
