"""VM runtime costs: hypercalls, exits, VM switches, spawn latency, idle VMs.

Usage: python tools/bench/bench_vm.py [--quick]

Prints medians of repeated runs, each measured in this one process:
- hypercall round trip handled inside the CPU hook (CLOCK), goal <= 5 us;
- hypercall that exits emulation and re-enters (IDLE as a yield), one VM;
- VM-to-VM switch: two VMs yielding to each other, goal <= 10 us (Denali: 1.4-9 us);
- spawn to first guest instruction, goal <= 1 ms (Firecracker: 125 ms to init);
- CPU used by 1,000 idle VMs over 10 s, goal < 1% of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from common import per_op_once, table

from denali.abi import Irq
from denali.kernel import Kernel


def per_op(image: str, n: int, vms: int, runs: int) -> float:
    """Median seconds per operation: (t(n) - t(1)) / (n - 1) / vms."""
    return statistics.median(per_op_once(image, n, vms) for _ in range(runs))


async def spawn_latency(count: int) -> list[float]:
    lat = []
    async with Kernel() as k:
        for _ in range(count):
            t0 = k.now_ns()
            vm = await k.spawn("test-exit", cmdline="status=0", memory="4M")
            await vm.wait()
            assert vm.first_slice_ns is not None
            lat.append((vm.first_slice_ns - t0) / 1e3)
    return lat


async def idle_cpu(count: int, seconds: float) -> tuple[float, float]:
    async with Kernel() as k:
        vms = [await k.spawn("test-idle", cmdline="ms=1000000 wait=host", memory="1M") for _ in range(count)]
        for vm in vms:
            await vm.until_idle()
        await asyncio.sleep(0.5)
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        for vm in vms:
            vm.interrupt(Irq.HOST)
        for vm in vms:
            await vm.wait()
    return cpu, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = 20_000 if args.quick else 100_000
    hc = per_op("bench-hcall", n, 1, args.runs)
    yl = per_op("bench-yield", n // 4, 1, args.runs)
    sw = per_op("bench-yield", n // 4, 2, args.runs)
    lat = asyncio.run(spawn_latency(50 if args.quick else 200))
    count, secs = (200, 3.0) if args.quick else (1000, 10.0)
    cpu, wall = asyncio.run(idle_cpu(count, secs))
    rows = [("what", "median", "goal", "reference")]
    rows.append(
        (
            "hypercall handled in the hook (CLOCK)",
            f"{hc * 1e6:.2f} us",
            "<= 5 us",
            "bare Unicorn: 8.7 us binding / 3.2 us direct",
        )
    )
    rows.append(("hypercall exit + re-entry (IDLE yield, 1 VM)", f"{yl * 1e6:.2f} us", "", ""))
    rows.append(("VM-to-VM switch (2 VMs yielding)", f"{sw * 1e6:.2f} us", "<= 10 us", "Denali 1.4-9 us"))
    rows.append(
        (
            "spawn to first guest instruction",
            f"{statistics.median(lat) / 1e3:.3f} ms (p90 {sorted(lat)[int(len(lat) * 0.9)] / 1e3:.3f})",
            "<= 1 ms",
            "Firecracker 125 ms",
        )
    )
    rows.append(
        (f"{count} idle VMs, CPU over {secs:.0f} s", f"{cpu / wall * 100:.3f} % of a core", "< 1 %", "")
    )
    table("VM runtime", rows)


if __name__ == "__main__":
    main()
