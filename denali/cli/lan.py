"""What ``denali boot`` tells the user about the LAN: the VMs' addresses and how to reach them.

``lan_lines`` is a pure function of the VMs' command lines, the ports' state and
whether commands need ``sudo``; ``report`` gathers that state from the open ports and
prints the lines on stderr. Guests take their address from ``ip=ADDR[/PREFIX]`` on the
command line (``/24`` when the prefix is left out), which is what is read here.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Final

from denali.net.tap import HostSide, TapPort
from denali.net.vxlan import VxlanPort

_MAX_RUNS: Final = 3
"""Address runs listed one by one before the summary says "N addresses from A to B"."""


def guest_address(cmdline: str) -> ipaddress.IPv4Interface | None:
    """The address a guest configures from ``ip=`` on its command line, if any."""
    for word in cmdline.split():
        if word.startswith("ip="):
            value = word[3:]
            try:
                return ipaddress.IPv4Interface(value if "/" in value else f"{value}/24")
            except ValueError:
                return None
    return None


def _runs(ips: list[ipaddress.IPv4Address]) -> list[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]]:
    """Sorted addresses as runs of consecutive ones: [(first, last), ...]."""
    runs: list[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]] = []
    for ip in sorted(set(ips)):
        if runs and int(ip) == int(runs[-1][1]) + 1:
            runs[-1] = (runs[-1][0], ip)
        else:
            runs.append((ip, ip))
    return runs


def describe_addresses(addresses: Sequence[ipaddress.IPv4Interface]) -> str:
    """ "10.0.0.1 to 10.0.0.100 (10.0.0.0/16)", per subnet, for a list of VM addresses."""
    by_net: dict[ipaddress.IPv4Network, list[ipaddress.IPv4Address]] = {}
    for a in addresses:
        by_net.setdefault(a.network, []).append(a.ip)
    parts = []
    for net, ips in by_net.items():
        runs = _runs(ips)
        if len(runs) > _MAX_RUNS:
            text = f"{len(set(ips)):,} addresses from {runs[0][0]} to {runs[-1][1]}"
        else:
            text = ", ".join(str(a) if a == b else f"{a} to {b}" for a, b in runs)
        parts.append(f"{text} ({net})")
    return "; ".join(parts)


def suggest_host(addresses: Sequence[ipaddress.IPv4Interface]) -> ipaddress.IPv4Interface | None:
    """A host-side address in the first VM's subnet that no VM uses (the highest free one)."""
    if not addresses:
        return None
    net = addresses[0].network
    used = {a.ip for a in addresses}
    ip = net.broadcast_address - 1
    while ip > net.network_address:
        if ip not in used:
            return ipaddress.IPv4Interface(f"{ip}/{net.prefixlen}")
        ip -= 1
    return None


@dataclass(frozen=True)
class TapState:
    """A TAP port as the hints see it: its device and what its host side has now."""

    device: str
    side: HostSide


@dataclass(frozen=True)
class VxlanState:
    vni: int
    remotes: tuple[str, ...]


def _tap_lines(tap: TapState, addresses: Sequence[ipaddress.IPv4Interface], sudo: str) -> list[str]:
    dev, side = tap.device, tap.side
    suggestion = suggest_host(addresses)
    want = str(suggestion) if suggestion is not None else "ADDR/PREFIX"
    if side.address is None or not side.up:
        cmds = []
        if side.address is None:
            cmds.append(f"{sudo}ip addr add {want} dev {dev}")
        if not side.up:
            cmds.append(f"{sudo}ip link set {dev} up")
        state = (
            "down and has no address"
            if side.address is None and not side.up
            else "down"
            if side.address is not None
            else "up but has no address"
        )
        return [
            f"{dev} is {state}; to reach the VMs from this host run:",
            f"  {' && '.join(cmds)}",
            f"or boot with --net tap:{dev},host={want}",
        ]
    host = side.address
    if not addresses:
        return [f"{dev} is up with {host}; give the VMs addresses in {host.network} (--cmdline ip=...)"]
    inside = [a for a in addresses if a.ip in host.network]
    lines = []
    if any(a.ip == host.ip for a in addresses):
        lines.append(
            f"{dev}'s host address {host.ip} is also a VM's address: choose another (e.g. host={want})"
        )
    if inside:
        first = inside[0].ip
        lines.append(
            f"reach them from this host through {dev} ({host}), e.g. ping {first} or curl http://{first}/"
        )
    if len(inside) < len(addresses):
        lines.append(
            f"{len(addresses) - len(inside):,} VM addresses are outside {dev}'s subnet "
            f"{host.network}: this host cannot reach them through {dev}; use "
            f"--net tap:{dev},host={want}"
        )
    return lines


def lan_lines(
    cmdlines: Sequence[str], taps: Sequence[TapState], vxlans: Sequence[VxlanState], sudo: bool = False
) -> list[str]:
    """The lines (without the "denali: " prefix) that tell where the VMs are and how to
    reach them; none for a single VM on a LAN without an uplink."""
    found = [guest_address(c) for c in cmdlines]
    addresses = [a for a in found if a is not None]
    if len(cmdlines) < 2 and not taps and not vxlans:
        return []
    lines = []
    if addresses:
        n = len(cmdlines)
        who = (
            "the VM is"
            if n == 1
            else f"{n:,} VMs are"
            if len(addresses) == n
            else f"{len(addresses):,} of {n:,} VMs are"
        )
        lines.append(f"{who} at {describe_addresses(addresses)}")
    pre = "sudo " if sudo else ""
    for tap in taps:
        lines += _tap_lines(tap, addresses, pre)
    for vx in vxlans:
        lines.append(
            f"the LAN is joined to VXLAN {vx.vni} ({', '.join(vx.remotes) or 'no remotes'}): "
            "machines on that VXLAN reach the VMs at their addresses"
        )
    if addresses and not taps and not vxlans:
        want = suggest_host(addresses)
        lines.append(
            "the LAN has no uplink to this host; to reach the VMs add "
            f"--net tap:dtap0,host={want if want is not None else 'ADDR/PREFIX'}"
        )
    return lines


def report(cmdlines: Sequence[str], ports: Sequence[TapPort | VxlanPort], out: IO[str]) -> None:
    """Print ``lan_lines`` for these VMs and the attached ports to ``out``."""
    taps = [TapState(p.device, p.host_side()) for p in ports if isinstance(p, TapPort)]
    vxlans = [
        VxlanState(p.vni, tuple(f"{h}:{port}" for h, port in p.remotes))
        for p in ports
        if isinstance(p, VxlanPort)
    ]
    for line in lan_lines(cmdlines, taps, vxlans, sudo=os.geteuid() != 0):
        out.write(f"denali: {line}\n")
    out.flush()
