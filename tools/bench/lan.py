"""A Linux host on a kernel's LAN for the scale benchmarks: a network namespace made
here, a TAP device attached to the kernel's switch and moved into it, the load generator
(lanload.py) run inside it. Addresses: VM i (1-based spawn order) is 10.64.0.0 + i in
10.64.0.0/10; the Linux host is 10.127.255.254. Needs root, ip (iproute2)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import rss_mib

from denali.kernel import Kernel
from denali.net.tap import TapPort
from denali.vm import Vm

HERE = Path(__file__).resolve().parent
BASE = int(ipaddress.IPv4Address("10.64.0.0"))
HOST_IP = "10.127.255.254"
PREFIX = 10


def vm_ip(i: int) -> str:
    """The address of the i-th VM (1-based)."""
    return str(ipaddress.IPv4Address(BASE + i))


async def sh(*cmd: str, check: bool = True) -> None:
    """Run a command without blocking the loop (the kernel must keep answering)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.decode(errors='replace').strip()}")


class LinuxHost:
    """``async with LinuxHost(kernel) as host``: the namespace and TAP exist inside."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.ns = f"dlan{os.getpid()}"
        self.dev = f"dlt{os.getpid() % 100000}"
        self.tap: TapPort | None = None

    async def __aenter__(self) -> LinuxHost:
        await sh("ip", "netns", "add", self.ns)
        try:
            tap = TapPort(self.dev)
            tap.open()
            self.tap = tap
            self.kernel.switch.attach(tap)
            await sh("ip", "link", "set", self.dev, "netns", self.ns)
            # no IPv6 on the link: its router and multicast-listener chatter is flooded
            # to every VM (and would swap in every swapped-out one)
            await sh(
                "ip",
                "netns",
                "exec",
                self.ns,
                "sysctl",
                "-q",
                "-w",
                f"net.ipv6.conf.{self.dev}.disable_ipv6=1",
            )
            await sh("ip", "-n", self.ns, "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", self.dev)
            await sh("ip", "-n", self.ns, "link", "set", self.dev, "up")
            await sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.tap is not None:
            self.tap.close()
        await sh("ip", "netns", "del", self.ns, check=False)

    async def neighbours(self, vms: Sequence[Vm], first: int = 1, ping: bool = True) -> None:
        """Permanent neighbour entries for ``vms`` (VM k is vm_ip(first + k)): Linux's
        neighbour table holds 1,024 dynamic entries, far fewer than our VMs.

        First one ping by ordinary ARP, so that the switch learns the Linux host's
        address from its request (answered by the switch): the VMs' own requests for
        the host are then answered by the switch instead of flooding all the VMs."""
        if ping:  # (ping=False: the caller made the switch learn the host another way)
            await sh("ip", "netns", "exec", self.ns, "ping", "-c", "1", "-W", "5", vm_ip(first))
        with tempfile.NamedTemporaryFile("w", suffix=".neigh") as f:
            for k, vm in enumerate(vms):
                f.write(
                    f"neigh replace {vm_ip(first + k)} lladdr {vm.mac.hex(':')} dev {self.dev} "
                    "nud permanent\n"
                )
            f.flush()
            await sh("ip", "-n", self.ns, "-batch", f.name)

    async def announce(self) -> None:
        """An ARP request from the Linux host (a ping to an address nobody has): the switch
        learns the host's binding from it (and answers the VMs' requests for the host)
        without any VM being asked."""
        await sh("ip", "netns", "exec", self.ns, "ping", "-c", "1", "-W", "1", "10.127.255.253", check=False)
        await sh("ip", "-n", self.ns, "neigh", "flush", "dev", self.dev)  # no more ARP retries
        await asyncio.sleep(0.2)

    async def load(
        self, *args: str, on_line: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Run lanload.py with ``args`` in the namespace; JSON lines go to ``on_line``;
        returns the last line (the summary)."""
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.ns,
            sys.executable,
            str(HERE / "lanload.py"),
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        last: dict[str, Any] = {}
        async for raw in proc.stdout:
            last = json.loads(raw)
            if on_line is not None:
                on_line(last)
        if await proc.wait() != 0:
            raise RuntimeError(f"lanload {' '.join(args)} failed")
        return last


async def boot_httpd(k: Kernel, n: int, progress: bool = True) -> list[Vm]:
    """Spawn n httpd VMs (vm_ip(1..n)) and wait until every one listens and idles."""
    vms: list[Vm] = []
    for i in range(1, n + 1):
        vms.append(await k.spawn("httpd", cmdline=f"ip={vm_ip(i)}/{PREFIX}"))
        if progress and i % 1000 == 0:
            print(f"  spawned {i:,}/{n:,}", file=sys.stderr, flush=True)
    for i, vm in enumerate(vms, start=1):
        await vm.until_idle()
        if progress and i % 10_000 == 0:
            print(f"  listening {i:,}/{n:,}, RSS {rss_mib():,.0f} MiB", file=sys.stderr, flush=True)
    return vms
