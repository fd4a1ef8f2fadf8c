"""Preemption: how long slices really last, and how long the event loop is blocked.

Usage: python tools/bench/bench_preempt.py [--slices 100000] [--slice-us 2000] [--stress-us 200]

Two VMs spin forever (test-spin, never calling the kernel); each slice's real length is
timed around the CPU's run. Goal: no slice longer than 2x its bound across 100,000
slices. A loop-lag probe (a callback every 1 ms) measures the longest time the event loop
went without running callbacks: it should stay near one slice.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import table

from denali.cpu import VCpu
from denali.kernel import Kernel


async def measure(slices: int, slice_us: int) -> tuple[list[float], float]:
    durations: list[float] = []
    orig = VCpu.run

    def timed(self: VCpu, lane: object, deadline_ns: int) -> object:
        t = time.perf_counter_ns()
        r = orig(self, lane, deadline_ns)  # type: ignore[arg-type]
        durations.append((time.perf_counter_ns() - t) / 1e3)
        return r

    VCpu.run = timed  # type: ignore[method-assign]
    max_lag = 0.0
    try:
        async with Kernel(slice_us=slice_us) as k:
            vms = [await k.spawn("test-spin", memory="1M") for _ in range(2)]
            loop = asyncio.get_running_loop()
            for vm in vms:  # both VMs have run: lag is measured from here
                while vm.first_slice_ns is None:  # noqa: ASYNC110 (no event for "has run")
                    await asyncio.sleep(0.001)
            last = loop.time()
            while len(durations) < slices:
                await asyncio.sleep(0.001)
                now = loop.time()
                max_lag = max(max_lag, now - last - 0.001)
                last = now
            for vm in vms:
                vm.kill()
    finally:
        VCpu.run = orig  # type: ignore[method-assign]
    return durations[:slices], max_lag


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=100_000)
    ap.add_argument("--slice-us", type=int, default=2000)
    ap.add_argument("--stress-us", type=int, default=200, help="a second, shorter slice bound")
    args = ap.parse_args()
    rows = [
        ("slice bound", "slices", "median", "p99", "p99.99", "max", "max / bound", "over 2x", "loop lag max")
    ]
    for slice_us, count in ((args.slice_us, args.slices), (args.stress_us, args.slices)):
        d, lag = asyncio.run(measure(count, slice_us))
        d.sort()
        rows.append(
            (
                f"{slice_us} us",
                str(len(d)),
                f"{d[len(d) // 2]:.0f} us",
                f"{d[int(len(d) * 0.99)]:.0f} us",
                f"{d[int(len(d) * 0.9999)]:.0f} us",
                f"{d[-1]:.0f} us",
                f"{d[-1] / slice_us:.2f}x",
                str(sum(1 for x in d if x > 2 * slice_us)),
                f"{lag * 1e6:.0f} us",
            )
        )
    table("Slice lengths of spinning guests (watchdog preemption)", rows)


if __name__ == "__main__":
    main()
