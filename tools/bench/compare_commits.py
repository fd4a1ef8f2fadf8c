"""The core's figures for two commits, side by side in one run (A, B, A, B, ...).

Usage: python tools/bench/compare_commits.py [--base REV] [--head REV] [--rounds 5] [--quick]

Each commit is checked out into a temporary worktree (guest images built there), and
every round runs one measuring process per commit, alternating, with that tree first
on sys.path. A process measures, through the public API only (so old and new trees
answer the same questions): guest speed (bench-alu under the kernel), a hypercall
answered in the hook (CLOCK), a VM-to-VM switch (2 VMs yielding), spawn to first guest
instruction, and a swap-out + swap-in of a VM that touched 1 MiB. It prints the medians
of the per-round ratios head/base (below 1: head is faster, for times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, table

_PROBE = r"""
import asyncio, json, sys, time
from denali.kernel import Kernel

async def run(image, cmdlines, memory="4M", **kw):
    async with Kernel(**kw) as k:
        t = time.perf_counter()
        vms = [await k.spawn(image, cmdline=c, memory=memory) for c in cmdlines]
        for vm in vms:
            await vm.wait()
        return time.perf_counter() - t

def per_op(image, n, vms):
    base = asyncio.run(run(image, ["n=1"] * vms))
    full = asyncio.run(run(image, [f"n={n}"] * vms))
    return (full - base) / (n - 1) / vms

async def spawn_ms(count):
    lat = []
    async with Kernel() as k:
        for _ in range(count):
            t0 = k.now_ns()
            vm = await k.spawn("test-exit", cmdline="status=0", memory="4M")
            await vm.wait()
            lat.append((vm.first_slice_ns - t0) / 1e6)
    lat.sort()
    return lat[len(lat) // 2]

async def swap_ms(rounds):
    out = []
    async with Kernel(memory_budget=256 << 20) as k:
        vm = await k.spawn("test-touch", cmdline="kib=1024 wait=host", memory="16M")
        for _ in range(rounds):
            await vm.until_idle()
            t = time.perf_counter()
            if hasattr(vm, "swap_out"):
                await vm.swap_out()
            else:
                from denali import lowlevel
                await lowlevel.swap_out(vm)
            assert vm.swapped
            vm.interrupt(1 << 1)  # NET_RX: wakes it without ending it
            while vm.swapped or vm.state.value != "idle":
                await asyncio.sleep(0.0002)
            out.append((time.perf_counter() - t) * 1e3)
        vm.kill()
    out.sort()
    return out[len(out) // 2]

n = int(sys.argv[1])
alu = asyncio.run(run("bench-alu", [f"n={n * 100}"], memory="4M"))
res = {
    "guest speed, bench-alu (M loop iterations/s)": n * 100 / alu / 1e6,
    "hypercall in the hook (us)": per_op("bench-hcall", n, 1) * 1e6,
    "VM switch, 2 VMs yielding (us)": per_op("bench-yield", n // 4, 2) * 1e6,
    "spawn to first instruction (ms)": asyncio.run(spawn_ms(50)),
    "swap out + in, 1 MiB touched (ms)": asyncio.run(swap_ms(10)),
}
print(json.dumps(res))
"""


def _worktree(rev: str, into: Path) -> Path:
    path = into / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    subprocess.run(
        ["make", "-s", "-C", str(path / "guestos"), "-j2", f"OUT={path / 'denali' / 'images'}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


def _measure(tree: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(n)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="HEAD~1")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="denali-cmp-") as tmp:
        trees = {}
        try:
            for rev in (args.base, args.head):
                trees[rev] = _worktree(rev, Path(tmp))
            rounds: list[dict[str, dict[str, float]]] = []
            for r in range(args.rounds):
                got = {rev: _measure(trees[rev], n) for rev in (args.base, args.head)}
                rounds.append(got)
                print(f"round {r + 1}/{args.rounds}: " + json.dumps(got), file=sys.stderr)
        finally:
            for path in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
                )
    rows = [("figure", f"base {args.base}", f"head {args.head}", "head/base (median of rounds)")]
    for key in rounds[0][args.base]:
        a = [r[args.base][key] for r in rounds]
        b = [r[args.head][key] for r in rounds]
        ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
        rows.append((key, f"{statistics.median(a):.3f}", f"{statistics.median(b):.3f}", f"{ratio:.3f}"))
    table(f"{args.rounds} rounds, alternating", rows)


if __name__ == "__main__":
    main()
