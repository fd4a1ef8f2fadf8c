"""Live migration: downtime and total time against VM size and dirty rate.

Two kernels in this process, the destination serving its control API on a Unix socket
(the migration streams over it as between two processes). Each point is a test-dirty
guest (kib=N touched, rate=P pages dirtied per ms) migrated from A to B, then back from B
to A next round; the points are run in turn, round after round (A, B, C, A, B, C, ...),
and the medians of their rounds reported. An idle 16 MiB httpd is the reference point.

    python3 tools/bench/bench_migrate.py [--rounds 5] [--json]
    python3 tools/bench/bench_migrate.py --overhead [--rounds 5]

``--overhead``: what dirty tracking costs a guest that writes its memory hard
(test-swapsum kib=4096: 4 MiB rewritten per pass): its run time untracked, and tracked
with a new round (TLB flush, every page write-protected again) every 5 ms, alternating,
the median of the per-round ratios; and, for comparison, what comparing page hashes
instead would cost per round (CRC-32 of every touched page).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from typing import Any

import common  # noqa: F401  (puts the repository on sys.path)

from denali import api
from denali.kernel import Kernel
from denali.migration import migrate
from denali.vm import Vm

POINTS = [  # (name, image, memory, cmdline)
    ("httpd idle 16M", "httpd", "16M", "ip=10.66.0.1/24"),
    ("1 MiB, 0 p/ms", "test-dirty", "16M", "kib=1024 rate=0"),
    ("1 MiB, 16 p/ms", "test-dirty", "16M", "kib=1024 rate=16"),
    ("1 MiB, 64 p/ms", "test-dirty", "16M", "kib=1024 rate=64"),
    ("8 MiB, 16 p/ms", "test-dirty", "16M", "kib=8192 rate=16"),
    ("32 MiB, 16 p/ms", "test-dirty", "64M", "kib=32768 rate=16"),
    ("32 MiB, 256 p/ms", "test-dirty", "64M", "kib=32768 rate=256"),
]


async def main(rounds: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {p[0]: [] for p in POINTS}
    with tempfile.TemporaryDirectory() as d:
        socks = [os.path.join(d, "a.sock"), os.path.join(d, "b.sock")]
        async with Kernel(mac_tag=5) as a, Kernel(mac_tag=5) as b:
            kernels = [a, b]
            eps = [await api.serve(k, s) for k, s in zip(kernels, socks, strict=True)]
            try:
                vms: list[tuple[Vm, int]] = []
                for _name, image, memory, cmdline in POINTS:
                    vm = await a.spawn(image, memory=memory, cmdline=cmdline)
                    vms.append((vm, 0))
                await asyncio.sleep(1.0)  # every guest has written its working set
                for r in range(rounds):
                    for i, (name, *_rest) in enumerate(POINTS):
                        vm, at = vms[i]
                        src, dst = kernels[at], 1 - at
                        info = await migrate(src, vm, socks[dst])
                        vms[i] = (kernels[dst].vms[vm.id], dst)
                        results[name].append(info.as_dict())
                        await asyncio.sleep(0.2)  # it runs a little at its new place
                    print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
            finally:
                for e in eps:
                    await e.close()
    table = {}
    for name, rows in results.items():
        table[name] = {
            "downtime_ms": statistics.median(x["downtime_ms"] for x in rows),
            "total_ms": statistics.median(x["total_ms"] for x in rows),
            "rounds": statistics.median(x["rounds"] for x in rows),
            "pages": statistics.median(x["pages_sent"] for x in rows),
            "final_pages": statistics.median(x["pages_final"] for x in rows),
            "downtime_max_ms": max(x["downtime_ms"] for x in rows),
        }
    return table


async def _swapsum(tracked: bool) -> float:
    import time

    async with Kernel() as k:
        vm = await k.spawn("test-swapsum", cmdline="kib=4096 rounds=20", memory="16M")
        await asyncio.sleep(0)
        began = time.perf_counter()
        if tracked:
            while vm.memory is None:  # noqa: ASYNC110 (no event for "resident")
                await asyncio.sleep(0.001)
            await vm.track_dirty()
            while not vm.done:
                await asyncio.sleep(0.005)
                await vm.take_dirty()

        status = await vm.wait()
        assert status == 0, vm.console.text()
        return time.perf_counter() - began


def _hash_round_ms(pages: int = 1024) -> float:
    import mmap
    import time
    import zlib

    buf = mmap.mmap(-1, pages * 4096)
    buf[:] = os.urandom(pages * 4096)
    view = memoryview(buf)
    began = time.perf_counter()
    for _ in range(20):
        _ = [zlib.crc32(view[i * 4096 : (i + 1) * 4096]) for i in range(pages)]
    took = (time.perf_counter() - began) / 20
    view.release()
    return took * 1000


async def overhead(rounds: int) -> dict[str, Any]:
    plain, tracked, ratios = [], [], []
    for _ in range(rounds):
        a = await _swapsum(False)
        b = await _swapsum(True)
        plain.append(a)
        tracked.append(b)
        ratios.append(b / a)
    return {
        "untracked_s": statistics.median(plain),
        "tracked_s": statistics.median(tracked),
        "ratio_median": statistics.median(ratios),
        "hash_4MiB_round_ms": _hash_round_ms(),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--overhead", action="store_true", help="the cost of dirty tracking")
    args = ap.parse_args()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.overhead:
            print(json.dumps(runner.run(overhead(args.rounds)), indent=2))
            sys.exit(0)
        table = runner.run(main(args.rounds))
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print(
            "| point | downtime ms (median) | downtime ms (max) | total ms | pre-copy rounds | pages sent "
            "| pages while paused |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, t in table.items():
            print(
                f"| {name} | {t['downtime_ms']:.1f} | {t['downtime_max_ms']:.1f} | {t['total_ms']:.0f} | "
                f"{t['rounds']:.0f} | {t['pages']:,.0f} | {t['final_pages']:,.0f} |"
            )
