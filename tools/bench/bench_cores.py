"""Both cores: aggregate guest speed of CPU-bound VMs with 0, 1 and 2 worker threads.

Usage: python tools/bench/bench_cores.py [--n 1000000000] [--vms 2]

Each configuration boots the same VMs (bench-alu, a register loop) in a fresh kernel
and times from the first slice to the last exit. Goal: 2 workers >= 1.8x 1 worker.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import table

from denali.kernel import Kernel


async def run(workers: int, vms: int, n: int) -> float:
    async with Kernel(workers=workers) as k:
        t = time.perf_counter()
        booted = [await k.spawn("bench-alu", cmdline=f"n={n}", memory="1M") for _ in range(vms)]
        for vm in booted:
            await vm.wait()
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000_000)
    ap.add_argument("--vms", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    times = {w: min(asyncio.run(run(w, args.vms, args.n)) for _ in range(args.runs)) for w in (0, 1, 2)}
    rows = [("slices run on", "seconds", "speed vs 1 worker")]
    for w, label in ((0, "the event loop's thread"), (1, "1 worker thread"), (2, "2 worker threads")):
        rows.append((label, f"{times[w]:.3f}", f"{times[1] / times[w]:.2f}x"))
    table(f"{args.vms} CPU-bound VMs (bench-alu n={args.n}), best of {args.runs}", rows)


if __name__ == "__main__":
    main()
