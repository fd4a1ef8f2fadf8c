"""The native path against the pure-Python one (``KernelConfig.native``), side by side.

Usage: python tools/bench/bench_native.py [--rounds 5] [--quick] [--workers N] [--only NAMES] [--uvloop]

Each round runs every point twice in this one process, native then pure Python, each in
a fresh kernel (contenders alternate A, B, A, B, ...); the figure of a point is the
median of its per-round ratios native/pure-Python, next to the medians of each.
Points:

- CLOCK answered in the hook: bench-hcall, (t(n) - t(1)) / (n - 1), wall time;
- VM-to-VM switch: two bench-yield VMs (IDLE as a yield; no CLOCK on that path, so the
  native clock should not move it);
- HTTP between VMs: httpget against httpd in one kernel, 2,258-byte documents, 10
  keep-alive connections: requests/s (wall) and the loop thread's CPU per request;
- TCP between VMs: one 16 MB document over one connection, Mb/s;
- timer wake-ups: 1,000 VMs each arming a one-shot timer 100 ms ahead and idling until it
  fires, over and over (test-contract mode=timer, 10 Hz each): the process's CPU as a
  share of one core while they tick, and per wake-up;
- the same at 100 Hz each (100,000 wake-ups a second asked): how many are delivered.

``--workers N`` runs every kernel with N worker threads (``KernelConfig.workers``); CPU
figures are then the whole process's (the slices run on the workers), else the loop
thread's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from collections.abc import Callable

from common import per_op_once, table

from denali.kernel import Kernel

WORKERS = [0]
"""Worker threads of every kernel (``--workers``)."""


def cpu_time() -> float:
    return time.process_time() if WORKERS[0] else time.thread_time()


Point = Callable[[bool], dict[str, float]]


def clock(n: int) -> Point:
    return lambda native: {"us": per_op_once("bench-hcall", n, 1, native=native, workers=WORKERS[0]) * 1e6}


def switch(n: int) -> Point:
    return lambda native: {"us": per_op_once("bench-yield", n, 2, native=native, workers=WORKERS[0]) * 1e6}


async def _http(native: bool, count: int) -> dict[str, float]:
    async with Kernel(native=native, workers=WORKERS[0]) as k:
        await k.spawn("httpd", cmdline="ip=10.0.0.1/24")
        t, c = time.perf_counter(), cpu_time()
        vm = await k.spawn(
            "httpget", cmdline=f"ip=10.0.0.2/24 url=http://10.0.0.1/bytes/2258 count={count} conc=10"
        )
        await vm.wait()
        wall, cpu = time.perf_counter() - t, cpu_time() - c
        m = re.search(r"ok=(\d+) fail=(\d+)", vm.console.text())
        if not m or int(m.group(1)) != count:
            raise RuntimeError(vm.console.text())
        return {"req/s": count / wall, "us CPU/req": cpu / count * 1e6}


def http(count: int) -> Point:
    return lambda native: asyncio.run(_http(native, count))


async def _tcp(native: bool, size: int) -> dict[str, float]:
    async with Kernel(native=native, workers=WORKERS[0]) as k:
        await k.spawn("httpd", cmdline="ip=10.0.0.1/24")
        url = f"http://10.0.0.1/bytes/{size}"
        vm = await k.spawn("httpget", cmdline=f"ip=10.0.0.2/24 url={url} count=1 conc=1")
        await vm.wait()
        m = re.search(r"ok=1 fail=0 bytes=(\d+) ms=(\d+)", vm.console.text())
        if not m:
            raise RuntimeError(vm.console.text())
        return {"Mb/s": int(m.group(1)) * 8 / (max(int(m.group(2)), 1) / 1000) / 1e6}


def tcp(size: int) -> Point:
    return lambda native: asyncio.run(_tcp(native, size))


async def _ticking(native: bool, vms: int, seconds: float) -> dict[str, float]:
    hz = 10
    async with Kernel(native=native, workers=WORKERS[0]) as k:
        cmd = f"mode=timer n={int((seconds + 1.5) * hz)} ms={1000 // hz}"
        spawned = [await k.spawn("test-contract", cmdline=cmd, memory="1M") for _ in range(vms)]
        await asyncio.sleep(0.5)  # all started and ticking
        c, w = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - c, time.perf_counter() - w
        for vm in spawned:
            if await vm.wait() != 0:
                raise RuntimeError(vm.console.text())
    share = cpu / wall
    return {"% of a core": share * 100, "us CPU per wake-up": share / (vms * hz) * 1e6}


def ticking(vms: int, seconds: float) -> Point:
    return lambda native: asyncio.run(_ticking(native, vms, seconds))


async def _saturated(native: bool, vms: int, hz: int, seconds: float) -> dict[str, float]:
    async with Kernel(native=native, workers=WORKERS[0]) as k:
        cmd = f"mode=timer n={int((seconds + 30) * hz)} ms={1000 // hz}"
        spawned = [await k.spawn("test-contract", cmdline=cmd, memory="1M") for _ in range(vms)]
        await asyncio.sleep(1.0)  # all started and ticking
        w0, t = sum(vm.stats["irqs_raised"] for vm in spawned), time.perf_counter()
        await asyncio.sleep(seconds)
        delivered, wall = sum(vm.stats["irqs_raised"] for vm in spawned) - w0, time.perf_counter() - t
        for vm in spawned:
            vm.kill()
    return {"wake-ups/s delivered": delivered / wall, "% of those asked": delivered / wall / (vms * hz) * 100}


def saturated(vms: int, hz: int, seconds: float) -> Point:
    """``vms`` VMs each asking for ``hz`` one-shot timer wake-ups a second: how many the
    kernel delivers (more than one core can serve at 1,000 x 100 Hz)."""
    return lambda native: asyncio.run(_saturated(native, vms, hz, seconds))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--only", default="", help="points whose names contain one of these (comma-separated)")
    ap.add_argument("--uvloop", action="store_true", help="run every kernel on uvloop (as the CLI does)")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    WORKERS[0] = args.workers
    q = args.quick
    points: dict[str, Point] = {
        "CLOCK in the hook": clock(20_000 if q else 200_000),
        "VM-to-VM switch (2 VMs yielding)": switch(5_000 if q else 25_000),
        "HTTP between VMs": http(500 if q else 3000),
        "TCP between VMs (16 MB)": tcp(4_000_000 if q else 16_000_000),
        "VMs ticking at 10 Hz": ticking(200 if q else 1000, 1.0 if q else 3.0),
        "VMs asking for 100 Hz": saturated(200 if q else 1000, 100, 1.0 if q else 3.0),
    }
    if args.only:
        points = {k: v for k, v in points.items() if any(w in k for w in args.only.split(","))}
    got: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {p: [] for p in points}
    for r in range(args.rounds):
        for name, point in points.items():  # which contender runs first alternates
            if r % 2:
                py, nat = point(False), point(True)
            else:
                nat, py = point(True), point(False)
            got[name].append((nat, py))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    rows = [("point", "figure", "native (median)", "pure Python (median)", "native / Python (median ratio)")]
    for name, pairs in got.items():
        for key in pairs[0][0]:
            nat = statistics.median(a[key] for a, _ in pairs)
            py = statistics.median(b[key] for _, b in pairs)
            ratio = statistics.median(a[key] / b[key] for a, b in pairs)
            rows.append((name, key, f"{nat:,.3f}", f"{py:,.3f}", f"{ratio:.3f}"))
    loop = "uvloop" if args.uvloop else "asyncio's default loop"
    table(f"native vs pure Python, {args.rounds} rounds, {args.workers} worker threads, {loop}", rows)


if __name__ == "__main__":
    main()
