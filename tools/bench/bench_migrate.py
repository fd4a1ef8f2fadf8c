"""Live migration: downtime and total time against VM size and dirty rate.

Two kernels in this process, the destination serving its control API on a Unix socket
(the migration streams over it as between two processes). Each point is a test-dirty
guest (kib=N touched, rate=P pages dirtied per ms) migrated from A to B, then back from B
to A next round; the points are run in turn, round after round (A, B, C, A, B, C, ...),
and the medians of their rounds reported. An idle 16 MiB httpd is the reference point.

    python3 tools/bench/bench_migrate.py [--rounds 5] [--json]
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        table = runner.run(main(args.rounds))
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print("| point | downtime ms (median) | downtime ms (max) | total ms | pre-copy rounds | pages sent "
              "| pages while paused |")
        print("|---|---|---|---|---|---|---|")
        for name, t in table.items():
            print(f"| {name} | {t['downtime_ms']:.1f} | {t['downtime_max_ms']:.1f} | {t['total_ms']:.0f} | "
                  f"{t['rounds']:.0f} | {t['pages']:,.0f} | {t['final_pages']:,.0f} |")
