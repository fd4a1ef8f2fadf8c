"""The guest TCP/IP stack attacked from outside: 50,000 seeded malformed and adversarial
frames (``tests.net.wirefuzz``) from a Linux network namespace through a TAP device at
an httpd VM and a udpecho VM.

Afterwards both VMs are running (no guest fault), answered the pings the generator
paces itself with, and httpd serves curl a normal request; the guests' heap use is
bounded. The 1,000,000-frame run is ``tools/bench/bench_wirefuzz.py``. Every address
(10.78.0.0/24) lives on the TAP device inside a namespace the test made.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from denali.kernel import Kernel
from denali.net.ethernet import format_mac
from denali.net.tap import TapPort
from denali.vm import Vm, VmState
from tests.conftest import need_image
from tests.net.netns import need_tools, run

pytestmark = pytest.mark.net
ROOT = Path(__file__).resolve().parents[2]
FRAMES = 50_000
SEED = 20


@pytest.fixture
async def netns() -> AsyncIterator[str]:
    need_tools("ip", "curl")
    name = f"dwf{os.getpid()}"
    rc, out = await run("ip", "netns", "add", name)
    assert rc == 0, out
    try:
        yield name
    finally:
        await run("ip", "netns", "del", name)


def stats_lines(text: bytes) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in text.decode().splitlines() if line.strip())}


async def in_ns(netns: str, *cmd: str, limit: float = 30) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", netns, *cmd, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out + err


async def figures(netns: str) -> tuple[dict[str, int], dict[str, int]]:
    """(httpd's /stats, udpecho's port-8 figures), fetched from the namespace."""
    rc, page = await in_ns(netns, "curl", "-s", "-m", "10", "http://10.78.0.1/stats")
    assert rc == 0, page
    rc, udp = await in_ns(netns, sys.executable, "-m", "tests.net.wirefuzz", "--udp-stats", "10.78.0.2")
    assert rc == 0, udp
    return stats_lines(page), json.loads(udp)


async def fuzz(netns: str, dev: str, srv: Vm, echo: Vm, count: int, seed: int, limit: float) -> dict[str, int]:
    assert srv.nic is not None and echo.nic is not None
    rc, out = await in_ns(netns, sys.executable, "-m", "tests.net.wirefuzz", "--dev", dev, "--seed", str(seed),
                          "--count", str(count), "--target", f"10.78.0.1,{format_mac(srv.nic.fixed_mac)},80",
                          "--target", f"10.78.0.2,{format_mac(echo.nic.fixed_mac)}", limit=limit)
    assert rc == 0, out
    result: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_fifty_thousand_hostile_frames_through_tap(netns: str) -> None:
    need_image("httpd")
    need_image("udpecho")
    dev = f"dwf{os.getpid() % 1000000}"
    async with Kernel() as k:
        tap = TapPort(dev)
        tap.open()
        k.switch.attach(tap)
        try:
            for cmd in (("ip", "link", "set", dev, "netns", netns),
                        ("ip", "-n", netns, "addr", "add", "10.78.0.100/24", "dev", dev),
                        ("ip", "-n", netns, "link", "set", dev, "mtu", "9000", "up")):
                rc, out = await run(*cmd)
                assert rc == 0, (cmd, out)
            srv = await k.spawn("httpd", cmdline="ip=10.78.0.1/24")
            echo = await k.spawn("udpecho", cmdline="ip=10.78.0.2/24")
            while "listening" not in srv.console.text() or "listening" not in echo.console.text():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            http0, udp0 = await figures(netns)
            res = await fuzz(netns, dev, srv, echo, FRAMES, SEED, limit=240)
            assert res["sent"] >= FRAMES
            assert all(n > 0 for n in res["per_class"].values()), res["per_class"]
            assert res["established"] > 0 and res["arp_answered"] > 0
            for vm in (srv, echo):
                assert vm.fault is None, vm.fault
                assert vm.state not in (VmState.FAULTED, VmState.FAILED, VmState.EXITED), (vm.state, vm.console.text())
            # the last probe of the run was answered by both; few were lost on the way
            assert res["probes_lost"] <= res["probes"] // 100, res
            rc, body = await in_ns(netns, "curl", "-s", "-m", "10", "http://10.78.0.1/bytes/2258")
            assert rc == 0 and body == bytes(ord("a") + i % 26 for i in range(2258))
            http1, udp1 = await figures(netns)
            # bounded: what the flood left behind (half-open and abandoned connections
            # waiting out their timers) is well under the VM's 16 MiB
            assert http1["heap_used"] - http0["heap_used"] < 2 << 20, (http0, http1)
            assert udp1["heap_used"] - udp0["heap_used"] < 256 << 10, (udp0, udp1)
            assert udp1["rx_frames"] > udp0["rx_frames"] + FRAMES // 4
        finally:
            tap.close()
