"""Guest CPU speed: the kernel vs bare Unicorn, slice-bounding options, and vs qemu-i386.

Usage: python tools/bench/bench_cpu.py [--quick]

1. Guest MIPS of the same loop (bench-alu, bench-store, bench-call) run by the kernel
   (2 ms slices, watchdog preemption) and by a bare Unicorn engine configured the same
   way but run in one emu_start: ratio kernel/bare (goal >= 0.90).
2. Ways to bound a slice, on bench-alu: no bound (reference), count=, timeout=, and the
   kernel's watchdog thread.
3. Store-heavy and call-heavy loops under denali vs the same C loop built as a static
   Linux binary under qemu-i386 (needs `qemu-i386`: apt-get install qemu-user):
   ratio of speeds (goal >= 0.25).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time

from common import ROOT, BareGuest, count_instructions, table

from denali import _uc
from denali.kernel import Kernel

LOOPS = {"bench-alu": 100_000_000, "bench-store": 2000, "bench-call": 50_000_000}


def per_iteration(image: str) -> float:
    a = count_instructions(image, "n=1000")
    b = count_instructions(image, "n=3000")
    return (b - a) / 2000


def instructions(image: str, n: int) -> float:
    base = count_instructions(image, "n=1000")
    return base + per_iteration(image) * (n - 1000)


async def kernel_time(image: str, n: int) -> float:
    """Seconds from the VM's first slice to its end (spawn cost is measured elsewhere)."""
    async with Kernel() as k:
        vm = await k.spawn(image, cmdline=f"n={n}")
        await vm.wait()
        assert vm.first_slice_ns is not None and vm.ended_ns is not None
        return (vm.ended_ns - vm.first_slice_ns) / 1e9


def bare_time(image: str, n: int) -> float:
    g = BareGuest(image, f"n={n}")
    try:
        return g.run()
    finally:
        g.close()


def bounded_time(image: str, n: int, *, count: int = 0, timeout_us: int = 0) -> float:
    """Run in slices bounded by Unicorn's own count= or timeout=."""
    g = BareGuest(image, f"n={n}")
    eng = g.cpu.engine
    eip = g.cpu.eip
    t = time.perf_counter()
    while not g.terminated:
        err = _uc._emu_start(eng._h, eip, 0, timeout_us, count)
        if err:
            raise RuntimeError(_uc.strerror(err))
        eip = eng.reg_read(_uc.REG_EIP)
    dt = time.perf_counter() - t
    g.close()
    return dt


def qemu_time(binary: str, n: int) -> float:
    t = time.perf_counter()
    subprocess.run(["qemu-i386", binary, str(n)], check=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller loops")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    scale = 0.2 if args.quick else 1.0
    loops = {k: max(2000, int(v * scale)) for k, v in LOOPS.items()}

    rows = [("loop", "instructions", "bare MIPS", "kernel MIPS", "kernel/bare")]
    for image, n in loops.items():
        ins = instructions(image, n)
        bare = min(bare_time(image, n) for _ in range(args.runs))
        kern = min(asyncio.run(kernel_time(image, n)) for _ in range(args.runs))
        rows.append(
            (image, f"{ins:.3g}", f"{ins / bare / 1e6:.0f}", f"{ins / kern / 1e6:.0f}", f"{bare / kern:.2f}")
        )
    table("Guest speed under the kernel vs bare Unicorn (best of runs)", rows)

    image, n = "bench-alu", loops["bench-alu"]
    ins = instructions(image, n)
    ref = min(bare_time(image, n) for _ in range(args.runs))
    opts = [
        ("no bound (one emu_start)", ref),
        ("count=100000 per slice", min(bounded_time(image, n, count=100_000) for _ in range(args.runs))),
        ("timeout=2000us per slice", min(bounded_time(image, n, timeout_us=2000) for _ in range(args.runs))),
        (
            "kernel: watchdog thread, 2 ms slices",
            min(asyncio.run(kernel_time(image, n)) for _ in range(args.runs)),
        ),
    ]
    rows = [("slice bound", "MIPS", "vs no bound")]
    rows += [(name, f"{ins / t / 1e6:.0f}", f"{ref / t:.2f}") for name, t in opts]
    table(f"Ways to bound a slice ({image}, n={n})", rows)

    if shutil.which("qemu-i386") is None:
        print("\n(qemu-i386 not found: apt-get install qemu-user for the qemu comparison)")
        return
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["make", "-s", "-C", str(ROOT / "guestos"), "linux", f"OUT_LINUX={d}"], check=True)
        rows = [("loop", "qemu-i386 s", "denali s", "denali speed / qemu speed")]
        for image, linux in (("bench-store", "linux-store"), ("bench-call", "linux-call")):
            n = loops[image]
            q = min(qemu_time(f"{d}/{linux}", n) for _ in range(args.runs))
            k = min(asyncio.run(kernel_time(image, n)) for _ in range(args.runs))
            rows.append((image, f"{q:.3f}", f"{k:.3f}", f"{q / k:.2f}"))
        table("Same C loop: denali vs qemu-i386 (best of runs, whole-process time for qemu)", rows)


if __name__ == "__main__":
    main()
