"""Paper experiment (e): kernel memory per VM vs the number of VMs.

Usage: python tools/bench/paper_memory.py [--quick]

Each point runs in a fresh process (``--child N --budget B``): a kernel boots 4 warm-up
VMs (100 under a budget; so lazy imports, the LAN switch, allocator pools and the
budget's worth of resident VMs exist), reads VmRSS from
/proc/self/status, boots N test-idle VMs (16 MiB address space, no NIC, waiting in
idle-with-timeout for a host interrupt) and reads VmRSS again once all are idle;
the figure is (RSS after - RSS before) / N. Both readings follow gc.collect() and
glibc's malloc_trim(0), so heap that engines freed as they came and went (under a
budget) is not counted as the swapped VMs' memory.

- resident: no memory budget, every VM keeps its Unicorn engine and guest memory.
  A kernel holds at most KernelConfig.max_engines (vm.max_map_count / 8) resident VMs;
  past that ``spawn`` raises ResourceError and the series stops there.
- swapped: a 32 MiB memory budget, and every VM is swapped out once idle (most already
  are, to make room for the next); the figure is then what the kernel keeps of a
  swapped VM (its Vm object, coroutine, register record and page bitmap).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time

from figures import Figure, Series, write_figure

from denali.errors import ResourceError
from denali.kernel import Kernel
from denali.swap import process_rss, trim_heap
from denali.vm import Vm

BUDGET = 32 << 20
WARM = 100
"""Warm-up VMs under a budget: more than it holds, so the resident set's memory (engines
come and go) is at its high-water mark before the first RSS reading."""


def rss_bytes() -> int:
    """RSS after gc and malloc_trim(0): freed heap (engines come and go) goes back first."""
    gc.collect()
    trim_heap()
    return process_rss()


async def boot(k: Kernel, n: int, swap: bool) -> list[Vm]:
    vms = []
    for _ in range(n):
        vms.append(await k.spawn("test-idle", cmdline="ms=100000000 wait=host", nic=False))
    for vm in vms:
        await vm.until_idle()
        if swap:
            await vm.swap_out()
    return vms


async def child(n: int, budget: int) -> dict[str, object]:
    async with Kernel(memory_budget=budget or None) as k:
        await boot(k, WARM if budget else 4, budget > 0)
        before, t = rss_bytes(), time.perf_counter()
        try:
            vms = await boot(k, n, budget > 0)
        except ResourceError as e:
            return {"error": type(e).__name__, "vms": len(k.vms) - 4, "max_engines": k.max_engines}
        secs = time.perf_counter() - t
        for _ in range(100):  # swap-outs started by the gatekeeper finish in the background
            if not budget or all(vm.swapped is not None for vm in vms):
                break
            await asyncio.sleep(0.05)
        grown = rss_bytes() - before
        swapped = sum(1 for vm in vms if vm.swapped is not None)
        return {"per_vm": grown / n, "swapped": swapped, "secs": secs}


def run_child(n: int, budget: int) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, __file__, "--child", str(n), "--budget", str(budget)],
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"N={n:,} budget={budget >> 20} MiB: {out}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", type=int, default=0)
    ap.add_argument("--budget", type=int, default=0)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.budget))))
        return
    ns = [100, 1000] if args.quick else [100, 1000, 5000, 10000]
    resident: list[float | None] = []
    swapped: list[float | None] = []
    stopped = ""
    for n in ns:
        if stopped:
            resident.append(None)
        else:
            r = run_child(n, 0)
            if "error" in r:
                stopped = (
                    f"at N={n:,}, spawn raised {r['error']} after {r['vms']:,} VMs (+ 4 warm-up VMs "
                    f"= max_engines = {r['max_engines']:,})"
                )
            resident.append(None if stopped else float(str(r["per_vm"])) / 1024)
        s = run_child(n, BUDGET)
        swapped.append(float(str(s["per_vm"])) / 1024)
    last = swapped[-1] or 0.0
    grown = [(y or 0.0) * n for y, n in zip(swapped, ns, strict=True)]  # KB in all
    marginal = (grown[-1] - grown[-2]) / (ns[-1] - ns[-2])
    notes = [
        "Measured: growth of the process's RSS (VmRSS, after malloc_trim) while N test-idle VMs "
        "(16 MiB address space, no NIC) wait in idle-with-timeout, divided by N; each point in a "
        "fresh process. Resident: no budget, every VM keeps its engine and memory; swapped: a "
        f"{BUDGET >> 20} MiB budget and every VM swapped out once idle.",
        f"Paper (Denali, OSDI 2002): 8.5 KB (8,472 bytes) of kernel memory per VM; ours for a swapped "
        f"VM: {last:.1f} KB ({last * 1024:,.0f} bytes) at N={ns[-1]:,}, and {marginal:.1f} KB "
        f"({marginal * 1024:,.0f} bytes) per VM added from N={ns[-2]:,} to {ns[-1]:,}; resident VMs "
        f"cost {(resident[0] or 0) / 1024:.2f} MB each.",
    ]
    if stopped:
        notes.append(
            f"The resident series stops at the engine limit (KernelConfig.max_engines = "
            f"vm.max_map_count / 8): {stopped}; a budget lifts it."
        )
    write_figure(
        Figure(
            name="paper_memory",
            title="Kernel memory per VM vs number of VMs",
            xlabel="VMs (N)",
            ylabel="KB per VM (RSS growth / N)",
            x=ns,
            logx=True,
            logy=True,
            fmt="{:,.1f}",
            series=[
                Series("resident (KB per VM)", resident),
                Series("swapped out (KB per VM)", swapped, "s-"),
            ],
            notes=notes,
        )
    )


if __name__ == "__main__":
    main()
