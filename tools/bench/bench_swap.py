"""Swap figures: kernel memory per swapped-out VM, swap-out/in time, bytes written.

Usage: python tools/bench/bench_swap.py [--vms 200]

- Kernel memory per swapped-out VM: Python heap (tracemalloc) of the kernel while N VMs
  are swapped out, divided by N (Denali: 8,472 bytes per VM).
- Swap-out and swap-in time of a 16 MiB VM that touched K KiB, and the bytes written
  (only touched pages are).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc

from common import table

from denali.abi import Irq
from denali.kernel import Kernel


async def per_vm_memory(n: int) -> float:
    async with Kernel(memory_budget=1 << 30) as k:
        warm = [await k.spawn("test-touch", cmdline="kib=0", nic=False) for _ in range(4)]
        for vm in warm:
            await vm.until_idle()
            await vm.swap_out()
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        vms = [await k.spawn("test-touch", cmdline="kib=0", nic=False) for _ in range(n)]
        for vm in vms:
            await vm.until_idle()
            await vm.swap_out()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        for vm in [*warm, *vms]:
            vm.interrupt(Irq.HOST)
        for vm in [*warm, *vms]:
            await vm.wait()
    return used / n


async def swap_times(kib: int, runs: int) -> tuple[float, float, int]:
    outs, ins, written = [], [], 0
    async with Kernel(memory_budget=1 << 30) as k:
        for _ in range(runs):
            vm = await k.spawn("test-touch", cmdline=f"kib={kib}", memory="16M")
            await vm.until_idle()
            before = k.stats()["swap"]["bytes_out"]
            t = time.perf_counter()
            await vm.swap_out()
            outs.append(time.perf_counter() - t)
            written = k.stats()["swap"]["bytes_out"] - before
            t = time.perf_counter()
            await vm._ensure_resident()
            ins.append(time.perf_counter() - t)
            vm.interrupt(Irq.HOST)
            await vm.wait()
    return statistics.median(outs), statistics.median(ins), written


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    mem = asyncio.run(per_vm_memory(args.vms))
    rows = [("what", "figure", "goal / reference")]
    rows.append(
        (
            f"kernel memory per swapped-out VM ({args.vms} VMs, no NIC)",
            f"{mem:,.0f} bytes",
            "<= 8,472 bytes (Denali)",
        )
    )
    for kib in (200, 4096):
        out, inn, written = asyncio.run(swap_times(kib, args.runs))
        rows.append((f"swap-out, 16 MiB VM that touched {kib} KiB", f"{out * 1e3:.2f} ms", ""))
        rows.append(("swap-in, same VM", f"{inn * 1e3:.2f} ms", ""))
        rows.append(("bytes written for it", f"{written / 1024:,.0f} KiB", "touched pages only"))
    table("Swap", rows)


if __name__ == "__main__":
    main()
