"""The Zipf HTTP benchmark on one host of 2 kernels against 1 kernel, side by side
(issue 16, item 2: "with 2 kernels on this 2-core machine, the Zipf HTTP benchmark
serves at least 1.7x what one kernel serves").

Usage (root; ip from iproute2):
  python tools/bench/bench_host.py [--vms 100] [--rounds 5] [--seconds 20] [--warmup 5]
                                   [--conc 64] [--kernels 2]

Each round boots ``denali boot httpd --kernels K --count N`` as a real process from
this tree, once with K = 1 and once with K = --kernels (alternating which goes first),
with a TAP device as the LAN's uplink (on kernel 0) moved into a Linux namespace made
here; lanload.py (tools/bench/lanload.py) runs there and sends GETs for 2,258-byte
documents to VMs drawn from a Zipf distribution (alpha 1), from --conc clients over
keep-alive connections, exactly as bench_zipf.py does. Requests answered after
--warmup seconds are counted. Prints each round, the per-round ratio, the median of the
ratios, and the load average before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

from lan import HERE, HOST_IP, PREFIX, sh, vm_ip

from denali.cli.common import EXIT_INTERRUPTED

ROOT = HERE.parents[1]
MAC_TAG = 0x5A


def _mac(vm_id: int) -> str:
    return f"02:{MAC_TAG:02x}:" + ":".join(f"{b:02x}" for b in vm_id.to_bytes(4, "big"))


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


async def point(kernels: int, n: int, seconds: float, warmup: float, conc: int) -> dict[str, Any]:
    """One measurement: a fresh host of ``kernels`` kernels serving ``n`` httpd VMs."""
    tag = os.getpid() % 100000
    ns, dev = f"dhb{tag}", f"dhb{tag}"
    await sh("ip", "netns", "add", ns)
    boot = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "denali", "boot", "httpd", "--kernels", str(kernels), "--count", str(n),
        "-c", f"ip={{ip:10.64.0.0}}/{PREFIX}", "--mac-tag", str(MAC_TAG), "--net", f"tap:{dev}", "-q",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert boot.stdout is not None
        listening = 0
        async with asyncio.timeout(300):
            while listening < n:
                line = await boot.stdout.readline()
                if not line:
                    raise RuntimeError(f"denali boot --kernels {kernels} ended while booting")
                listening += b"httpd: listening" in line
        drain = asyncio.ensure_future(_drain(boot.stdout))
        await sh("ip", "link", "set", dev, "netns", ns)
        await sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        await sh("ip", "-n", ns, "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", dev)
        await sh("ip", "-n", ns, "link", "set", dev, "up")
        await sh("ip", "-n", ns, "link", "set", "lo", "up")
        await sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "5", vm_ip(1))
        with tempfile.NamedTemporaryFile("w", suffix=".neigh") as f:
            for i in range(1, n + 1):
                f.write(f"neigh replace {vm_ip(i)} lladdr {_mac(i)} dev {dev} nud permanent\n")
            f.flush()
            await sh("ip", "-n", ns, "-batch", f.name)
        load = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, str(HERE / "lanload.py"), "zipf", vm_ip(1), str(n),
            "--seconds", str(warmup + seconds), "--conc", str(conc), "--pool", "1024", "--report", "1",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        lines = []
        assert load.stdout is not None
        async for raw in load.stdout:
            lines.append(json.loads(raw))
        if await load.wait() != 0:
            raise RuntimeError("lanload failed")
        measured = [ln for ln in lines if "t" in ln and ln["t"] > warmup]
        ok = sum(ln["ok"] for ln in measured)
        span = measured[-1]["t"] - warmup if measured else 1.0
        drain.cancel()
        return {"kernels": kernels, "req_s": ok / span, "errors": lines[-1].get("errors", 0)}
    finally:
        if boot.returncode is None:
            boot.send_signal(signal.SIGTERM)
        rc = await boot.wait()
        if rc not in (0, EXIT_INTERRUPTED):
            print(f"  (denali boot --kernels {kernels} ended with status {rc})", file=sys.stderr)
        await sh("ip", "netns", "del", ns, check=False)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--kernels", type=int, default=2)
    args = ap.parse_args()
    print(f"load average before: {loadavg()}  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    ratios = []
    one: list[float] = []
    many: list[float] = []
    for r in range(args.rounds):
        order = (1, args.kernels) if r % 2 == 0 else (args.kernels, 1)
        got: dict[int, dict[str, Any]] = {}
        for k in order:
            got[k] = asyncio.run(point(k, args.vms, args.seconds, args.warmup, args.conc))
        a, b = got[1]["req_s"], got[args.kernels]["req_s"]
        one.append(a)
        many.append(b)
        ratios.append(b / a)
        print(
            f"round {r + 1}: 1 kernel {a:,.0f} req/s ({got[1]['errors']} errors), {args.kernels} kernels "
            f"{b:,.0f} req/s ({got[args.kernels]['errors']} errors): {b / a:.2f}x   load {loadavg()}",
            flush=True,
        )
    print(
        f"median: 1 kernel {statistics.median(one):,.0f} req/s, {args.kernels} kernels "
        f"{statistics.median(many):,.0f} req/s; median of the per-round ratios "
        f"{statistics.median(ratios):.2f}x "
        f"(goal >= 1.7x); load average after: {loadavg()}"
    )


if __name__ == "__main__":
    main()
