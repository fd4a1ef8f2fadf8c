"""Scale: N VMs of 16 MiB (each with a NIC) in one kernel under a memory budget.

Usage: python tools/bench/bench_scale.py [--vms 10000] [--budget 3G]

Boots N test-idle VMs, waits until every one has run and idles (the gatekeeper admits
them in FIFO order and swaps idle ones out to stay under the budget), then wakes them
all (each swapped VM comes back in) and checks every one exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time

from common import rss_mib, table

from denali.abi import Irq
from denali.config import parse_size
from denali.kernel import Kernel


async def run(n: int, budget: int) -> list[tuple[str, str]]:
    async with Kernel(memory_budget=budget, max_vms=max(n, 100_000)) as k:
        t = time.perf_counter()
        vms = []
        for i in range(1, n + 1):
            vms.append(await k.spawn("test-idle", cmdline="ms=100000000 wait=host"))
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the spawned ones boot meanwhile
            if i % 10_000 == 0:
                print(
                    f"  spawned {i:,}/{n:,} in {time.perf_counter() - t:.0f} s, RSS {rss_mib():,.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        for vm in vms:
            await vm.until_idle()
        boot = time.perf_counter() - t
        resident = sum(1 for vm in vms if vm.swapped is None)
        outs = k.stats()["swap"]["swap_outs"]
        t = time.perf_counter()
        for vm in vms:
            vm.interrupt(Irq.HOST)
        results = await asyncio.gather(*(vm.wait() for vm in vms))
        wake = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [
        ("VMs (16 MiB address space, NIC each)", f"{n:,}"),
        ("booted and idle", f"{boot:.1f} s ({n / boot:.0f} VMs/s)"),
        ("resident at the end / swapped out on the way", f"{resident:,} / {outs:,}"),
        ("peak RSS of the process", f"{rss:,.0f} MiB (budget {budget >> 20:,} MiB)"),
        ("all woken, swapped in and exited 0", f"{all(r == 0 for r in results)} in {wake:.1f} s"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10_000)
    ap.add_argument("--budget", default="3G")
    args = ap.parse_args()
    rows = asyncio.run(run(args.vms, parse_size(args.budget)))
    table("Scale", [("what", "figure"), *rows])


if __name__ == "__main__":
    main()
