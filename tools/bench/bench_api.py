"""Clones and scrapes: how fast VMs come from a snapshot, and what a scrape costs the loop.

Usage: python tools/bench/bench_api.py clones [--vms 2000] [--rounds 5]   (root, iproute2)
       python tools/bench/bench_api.py scrape [--vms 10000] [--budget 1G]

``clones``: a booted, listening httpd is paused and snapshotted; then, alternating, N
clones of it (A) and N httpd VMs booted from the image (B), each round in a fresh
kernel. A: the time until ``Kernel.clone`` has published all N, listening (clones of
a VM snapshotted in IDLE are lazy: no memory or engine until a frame or a deadline wakes
them), then a sweep from a Linux namespace behind a TAP device (lanload.py) that GETs
a 2,258-byte document from every clone at its new address (each clone woken by its
first frame takes Irq.CLONE, its address and MAC, then answers). B: the time until all
N listen and idle (the boot rate). Medians over the rounds and the median of the
per-round ratios.

``scrape``: N idle VMs under a memory budget (most swapped out); a ticker task on the
loop records the longest stretch of this thread's CPU time between two of its turns,
first with nothing else asked of the kernel, then while /metrics scrapes and top
queries run back to back; and the scrape and top latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import rss_mib, table
from lan import PREFIX, LinuxHost, boot_httpd, vm_ip

from denali import metrics
from denali.config import parse_size
from denali.kernel import Kernel


async def _snapshot(path: str) -> None:
    async with Kernel() as k:
        vm = await k.spawn("httpd", cmdline=f"ip={vm_ip(1)}/{PREFIX}")
        await vm.until_idle()
        await asyncio.sleep(0.2)
        await vm.pause()
        await k.snapshot(vm, path)


async def clone_round(path: str, n: int) -> dict[str, float]:
    async with Kernel(max_vms=max(n, 100_000)) as k, LinuxHost(k) as host:
        await host.announce()  # before the clones: an ARP broadcast now wakes nobody
        t = time.perf_counter()
        vms = await k.clone(path, n, cmdlines=[f"ip={vm_ip(i)}/{PREFIX}" for i in range(1, n + 1)])
        published = time.perf_counter() - t
        await host.neighbours(vms, ping=False)
        await asyncio.sleep(0.5)
        woken_early = sum(1 for vm in vms if vm.stats["slices"])
        t = time.perf_counter()
        res = await host.load("sweep", vm_ip(1), str(n), "--conc", "128")
        sweep = time.perf_counter() - t
        if res["http_ok"] != n:
            raise RuntimeError(f"only {res['http_ok']} of {n} clones answered HTTP")
        identified = sum(1 for vm in vms if vm.stats["irq_bits_delivered"] and vm.generation == 1)
        return {
            "published": published,
            "woken_early": woken_early,
            "http_ok": res["http_ok"],
            "sweep": sweep,
            "http_p50": res["http_ms"]["p50"],
            "identified": identified,
            "rss": rss_mib(),
        }


async def boot_round(n: int) -> float:
    async with Kernel(max_vms=max(n, 100_000)) as k:
        t = time.perf_counter()
        await boot_httpd(k, n, progress=False)
        return time.perf_counter() - t


async def clones(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="denali-bench-") as d:
        path = str(Path(d) / "httpd.snap")
        await _snapshot(path)
        a: list[dict[str, float]] = []
        b: list[float] = []
        for r in range(rounds):
            a.append(await clone_round(path, n))
            b.append(await boot_round(n))
            print(
                f"round {r + 1}: clones published {n / a[-1]['published']:,.0f}/s, "
                f"{a[-1]['http_ok']:,.0f} answered (sweep {a[-1]['sweep']:.1f} s); boot {n / b[-1]:,.0f}/s",
                file=sys.stderr,
                flush=True,
            )
    med = statistics.median
    table(
        f"{n:,} httpd VMs from a snapshot (A) vs booted (B), {rounds} rounds alternating",
        [
            (
                "A: clones published by Kernel.clone (listening, lazy)",
                f"{n / med(x['published'] for x in a):,.0f} VMs/s (median {med(x['published'] for x in a):.2f} s)",
            ),
            ("A: clones woken before any traffic reached them", f"{max(x['woken_early'] for x in a):,.0f}"),
            (
                "A: clones answering GET /bytes/2258 at their new address",
                f"{min(x['http_ok'] for x in a):,.0f} of {n:,} in every round",
            ),
            (
                "A: sweep of all clones, each woken by its first frame (128 at a time)",
                f"{med(x['sweep'] for x in a):.1f} s ({n / med(x['sweep'] for x in a):,.0f} VMs/s), "
                f"HTTP p50 {med(x['http_p50'] for x in a):,.0f} ms",
            ),
            (
                "A: clones that took Irq.CLONE and their new identity",
                f"{min(x['identified'] for x in a):,.0f}",
            ),
            (
                "B: booted from the image, listening and idle",
                f"{n / med(b):,.0f} VMs/s (median {med(b):.2f} s)",
            ),
            (
                "published clones / booted VMs per second, median of per-round ratios",
                f"{med(bb / x['published'] for x, bb in zip(a, b, strict=True)):.0f}x",
            ),
            ("process RSS after a clone round (max)", f"{max(x['rss'] for x in a):,.0f} MiB"),
        ],
    )


async def _longest_stretch(seconds: float, work: asyncio.Future[object] | None = None) -> float:
    longest = 0.0
    last = time.thread_time()
    end = time.perf_counter() + seconds
    while (work is not None and not work.done()) or (work is None and time.perf_counter() < end):
        await asyncio.sleep(0)
        now = time.thread_time()
        longest = max(longest, now - last)
        last = now
    return longest


async def scrape(n: int, budget: int) -> None:
    async with Kernel(memory_budget=budget, max_vms=max(n, 100_000)) as k:
        t = time.perf_counter()
        vms = [await k.spawn("test-idle", cmdline="ms=3600000", memory="1M") for _ in range(n)]
        for vm in vms:
            await vm.until_idle()
        boot = time.perf_counter() - t
        await asyncio.sleep(2)
        idle_gap = await _longest_stretch(3.0)
        sampler = metrics.CpuSampler(k)
        scrape_s: list[float] = []
        top_s: list[float] = []

        async def load() -> None:
            for _ in range(10):
                t0 = time.perf_counter()
                text = await metrics.prometheus(k)
                scrape_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await metrics.top(k, sampler, 50)
                top_s.append(time.perf_counter() - t0)
            assert f'denali_vms{{state="idle"}} {n}.0' in text, text[:400]

        gc_pauses: list[float] = []
        started: list[float] = []

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started.append(time.thread_time())
            elif started:
                gc_pauses.append(time.thread_time() - started.pop())

        gc.callbacks.append(on_gc)
        try:
            job = asyncio.ensure_future(load())
            busy_gap = await _longest_stretch(0, job)
            await job
            gc.disable()
            job = asyncio.ensure_future(load())
            nogc_gap = await _longest_stretch(0, job)
            await job
        finally:
            gc.enable()
            gc.callbacks.remove(on_gc)
        swapped = sum(1 for vm in vms if vm.swapped)
        series = len([ln for ln in text_lines(await metrics.prometheus(k)) if not ln.startswith("#")])
    med = statistics.median
    table(
        f"Scrapes at {n:,} idle VMs ({swapped:,} swapped out, budget {budget >> 20:,} MiB)",
        [
            ("VMs booted and idle", f"{n:,} in {boot:.0f} s"),
            ("longest stretch without a loop turn, idle kernel", f"{idle_gap * 1e3:.2f} ms (CPU time)"),
            (
                "longest stretch without a loop turn, 10 scrapes + 10 top",
                f"{busy_gap * 1e3:.2f} ms (CPU time)",
            ),
            ("longest garbage-collector pause meanwhile", f"{max(gc_pauses, default=0) * 1e3:.2f} ms"),
            ("the same, the collector held off", f"{nogc_gap * 1e3:.2f} ms (CPU time)"),
            ("slice length", "2.00 ms"),
            (
                "/metrics scrape latency median / max",
                f"{med(scrape_s) * 1e3:.0f} / {max(scrape_s) * 1e3:.0f} ms",
            ),
            ("top (50 busiest) latency median / max", f"{med(top_s) * 1e3:.0f} / {max(top_s) * 1e3:.0f} ms"),
            ("samples in a scrape", f"{series:,}"),
            ("process RSS", f"{rss_mib():,.0f} MiB"),
        ],
    )


def text_lines(text: str) -> list[str]:
    return text.splitlines()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("clones")
    c.add_argument("--vms", type=int, default=2000)
    c.add_argument("--rounds", type=int, default=5)
    s = sub.add_parser("scrape")
    s.add_argument("--vms", type=int, default=10_000)
    s.add_argument("--budget", default="1G")
    args = p.parse_args()
    import uvloop

    if args.what == "clones":
        uvloop.run(clones(args.vms, args.rounds))
    else:
        uvloop.run(scrape(args.vms, parse_size(args.budget)))


if __name__ == "__main__":
    main()
