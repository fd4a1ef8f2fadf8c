"""What a guest monitor costs its child: one hypercall with no monitor, under a monitor that
does not interpose on it, and interposed (a round trip through the monitor guest).

Usage: python tools/bench/bench_children.py [--rounds 5] [--n 100000] [--n-interposed 10000]

The child is bench-hcall (CLOCK hypercalls in a loop). Contenders, alternating in every
round (A, B, C, A, B, C, ...), each a fresh kernel in this one process:

- A, **no monitor**: bench-hcall as a VM of its own;
- B, **uninterposed**: dbgmon (the debugging monitor, ``quiet=1 mask=0``) runs bench-hcall
  as its child and interposes on no hypercall, so the child's CLOCKs go straight to the
  kernel;
- C, **interposed**: dbgmon ``quiet=1`` interposes on every hypercall: each CLOCK becomes
  an event message to the monitor guest, which wakes, reads it and answers PASS, and
  the kernel then completes the child's call.

Each contender runs the child with n hypercalls and with none in the same round; its
cost per hypercall is (t(n) - t(0)) / n, so start-up (the child image, the monitor)
cancels. Reported: medians over the rounds of that cost, and medians of the per-round
ratios B/A and C/A.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from common import table

from denali.devices.disk import DiskSpec
from denali.images import resolve
from denali.kernel import Kernel


def disk_of(image: str, path: Path) -> str:
    """The ELF of ``image`` padded to whole disk blocks (the monitor's "child" disk)."""
    data = Path(resolve(image).path).read_bytes()
    path.write_bytes(data + b"\0" * (-len(data) % 4096))
    return str(path)


async def once(kind: str, n: int, disk: str) -> float:
    """Seconds from spawn to end of one run of ``kind`` with the child making n CLOCKs."""
    async with Kernel() as k:
        t = time.perf_counter()
        if kind == "none":
            vm = await k.spawn("bench-hcall", cmdline=f"n={n}", nic=False)
        else:
            mask = " mask=0" if kind == "uninterposed" else ""
            vm = await k.spawn(
                "dbgmon",
                cmdline=f"quiet=1{mask} mem=1048576 -- n={n}",
                child_memory="2M",
                nic=False,
                disks=[DiskSpec(disk, name="child", mode="ro")],
            )
        status = await vm.wait()
        elapsed = time.perf_counter() - t
        if status != 0:
            raise RuntimeError(f"{kind}: exit {status}: {vm.console.text()}")
        seen = n + 1 if kind == "interposed" else 0  # the monitor sees the CLOCKs and TERMINATE
        if kind != "none" and f"after {seen} hypercalls" not in vm.console.text():
            raise RuntimeError(f"{kind}: unexpected monitor output: {vm.console.text()}")
        return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=100_000, help="CLOCKs per run, no monitor and uninterposed")
    ap.add_argument("--n-interposed", type=int, default=10_000, help="CLOCKs per interposed run")
    args = ap.parse_args()
    kinds = {"none": args.n, "uninterposed": args.n, "interposed": args.n_interposed}
    cost: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="denali-bench-children-") as d:
        disk = disk_of("bench-hcall", Path(d) / "child.img")
        for r in range(max(1, args.rounds)):
            for kind, n in kinds.items():
                full = asyncio.run(once(kind, n, disk))
                empty = asyncio.run(once(kind, 0, disk))
                cost[kind].append((full - empty) / n)
            line = ", ".join(f"{k} {v[-1] * 1e6:.2f} us" for k, v in cost.items())
            print(f"round {r + 1}: {line}", flush=True)
    med = {k: statistics.median(v) for k, v in cost.items()}
    ratio = {
        k: statistics.median([b / a for a, b in zip(cost["none"], cost[k], strict=True)])
        for k in ("uninterposed", "interposed")
    }
    table(
        "One CLOCK hypercall of a child VM (medians over rounds; contenders alternating)",
        [
            ("contender", "per hypercall", "vs no monitor (median of per-round ratios)"),
            ("no monitor (a VM of its own)", f"{med['none'] * 1e6:.2f} us", "1"),
            (
                "under dbgmon, not interposed (mask=0)",
                f"{med['uninterposed'] * 1e6:.2f} us",
                f"{ratio['uninterposed']:.2f}x",
            ),
            (
                "under dbgmon, interposed (a round trip through the monitor guest)",
                f"{med['interposed'] * 1e6:.2f} us",
                f"{ratio['interposed']:.2f}x",
            ),
        ],
    )


if __name__ == "__main__":
    main()
