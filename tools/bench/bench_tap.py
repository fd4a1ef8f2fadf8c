"""HTTP from a Linux network namespace through a TAP device to 1, 10 and 100 httpd VMs,
and ping round-trip time host to guest.

Usage: python tools/bench/bench_tap.py [--seconds 5] (root; ip and ping installed)

The namespace, the TAP device and every address (10.77.0.0/16) are made by this script
and removed at the end. The load generator (httpload.py) runs inside the namespace with
keep-alive connections spread over the VMs, 2,258-byte documents.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from common import table

from denali.kernel import Kernel
from denali.net.tap import TapPort

HERE = Path(__file__).resolve().parent


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


async def run(ns: str, vms: int, seconds: float, conns: int) -> tuple[float, float]:
    dev = f"dbtap{os.getpid() % 10000}"
    async with Kernel() as k:
        tap = TapPort(dev)
        tap.open()
        k.switch.attach(tap)
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", "10.77.255.254/16", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        hosts = [f"10.77.{i // 250}.{i % 250 + 1}" for i in range(vms)]
        servers = [await k.spawn("httpd", cmdline=f"ip={h}/16") for h in hosts]
        for s in servers:
            while "listening" not in s.console.text():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-c",
            "20",
            "-i",
            "0.05",
            "-q",
            hosts[0],
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        m = re.search(rb"= [\d.]+/([\d.]+)/", out)
        rtt = float(m.group(1)) if m else float("nan")
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            str(HERE / "httpload.py"),
            str(seconds),
            str(conns),
            "/bytes/2258",
            *hosts,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        m2 = re.search(rb"requests=(\d+) seconds=([\d.]+) errors=(\d+)", out)
        tap.close()
        if not m2:
            raise RuntimeError(out.decode())
        return int(m2.group(1)) / float(m2.group(2)), rtt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    rows = [("httpd VMs", "connections", "requests/s (2,258 B)", "ping RTT host -> guest")]
    for vms, conns in ((1, 8), (10, 20), (100, 100)):
        ns = f"dbt{os.getpid()}"
        sh("ip", "netns", "add", ns)
        try:
            rate, rtt = asyncio.run(run(ns, vms, args.seconds, conns))
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        rows.append((str(vms), str(conns), f"{rate:.0f}", f"{rtt:.3f} ms"))
    table("HTTP through a TAP device from a Linux namespace", rows)


if __name__ == "__main__":
    main()
