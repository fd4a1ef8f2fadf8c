"""Linux programs in Denali VMs vs qemu-i386, side by side in one run.

Usage: python tools/bench/bench_linux.py [--rounds N] [--vms N] [--size MiB]

Needs qemu-i386, gcc -m32 -static and Debian's busybox-static for i386 in the test cache
(tools/install-test-deps.sh). Contenders alternate in every round (qemu, denali, qemu,
...); the figures are medians of per-round ratios.

1. A cheap system call: getpid, timed inside the program (tools/bench/linux/getpid.c)
   under qemu-i386 and in a Denali VM (target: at most 2 us).
2. Whole-process time of `busybox sha256sum` and `busybox gzip -c` on 16 MiB: qemu-i386
   as a process, against `denali linux` as a process (Python start, kernel, VM, the
   program reading a packed disk), and against the VM alone inside a running kernel
   (spawn to exit). Target: within 2x of qemu-i386. Default slices, as a user gets them.
3. N Linux-program VMs in one kernel at once (default 1,000): each runs a static
   program that blocks reading its standard input (so all are alive together), then
   all are given input and must exit 0; spawn time and resident memory per VM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, rss_mib, table

from denali.devices.disk import DiskSpec
from denali.kernel import Kernel
from denali.linux import STREAM, run_linux, spawn_linux

CACHE = Path(os.environ.get("DENALI_TEST_CACHE", Path.home() / ".cache" / "denali-test"))
BUSYBOX = CACHE / "busybox-i386" / "bin" / "busybox"


def build(src: Path, out: Path) -> Path:
    subprocess.run(["gcc", "-m32", "-static", "-O2", "-o", str(out), str(src)], check=True)
    return out


def make_data(d: Path, size: int) -> Path:
    rnd = random.Random(6)
    tree = d / "tree"
    tree.mkdir()
    (tree / "random.bin").write_bytes(rnd.randbytes(size))
    words = [w.encode() for w in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")]
    text = bytearray()
    while len(text) < size:
        text += b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
    (tree / "text.txt").write_bytes(bytes(text[:size]))
    img = d / "data.img"
    subprocess.run(
        [sys.executable, "-m", "denali", "disk", "pack", str(tree), str(img)], check=True, capture_output=True
    )
    return img


def wall(cmd: list[str], cwd: Path | None = None) -> tuple[float, bytes]:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, check=True)
    return time.perf_counter() - t, r.stdout


async def vm_time(k: Kernel, argv: list[str], img: Path) -> tuple[float, bytes]:
    t = time.perf_counter()
    r = await run_linux(BUSYBOX, argv, kernel=k, disks=[DiskSpec(str(img), name="root", mode="ro")])
    dt = time.perf_counter() - t
    assert r.status == 0, r.stderr
    return dt, r.stdout


def getpid_ns(out: bytes) -> float:
    return float(out.split()[1])


async def bench_syscalls_and_tools(rounds: int, size: int, tmp: Path) -> None:
    qemu = shutil.which("qemu-i386")
    assert qemu, "qemu-i386 is missing (tools/install-test-deps.sh)"
    assert BUSYBOX.is_file(), f"{BUSYBOX} is missing (tools/install-test-deps.sh)"
    getpid = build(ROOT / "tools" / "bench" / "linux" / "getpid.c", tmp / "getpid")
    img = make_data(tmp, size)
    tree = tmp / "tree"
    g_q, g_d, ratios_g = [], [], []
    res: dict[str, dict[str, list[float]]] = {
        t: {"qemu": [], "cli": [], "vm": []} for t in ("sha256sum", "gzip")
    }
    async with Kernel() as k:
        for _ in range(rounds):
            _, out = wall([qemu, str(getpid), "1000000"])
            g_q.append(getpid_ns(out))
            r = await run_linux(getpid, ["getpid", "200000"], kernel=k)
            g_d.append(getpid_ns(r.stdout))
            ratios_g.append(g_d[-1] / g_q[-1])
            for tool, args in (
                ("sha256sum", ["sha256sum", "random.bin"]),
                ("gzip", ["gzip", "-c", "text.txt"]),
            ):
                tq, outq = wall([qemu, "-0", "busybox", str(BUSYBOX), *args], cwd=tree)
                tc, outc = wall(
                    [sys.executable, "-m", "denali", "linux", "--disk", f"root={img}:ro", str(BUSYBOX), *args]
                )
                tv, outv = await vm_time(k, ["busybox", *args], img)
                assert outq == outc == outv, (
                    f"{tool}: outputs differ",
                    len(outq),
                    len(outc),
                    len(outv),
                    [hashlib.md5(x).hexdigest()[:8] for x in (outq, outc, outv)],
                )
                res[tool]["qemu"].append(tq)
                res[tool]["cli"].append(tc)
                res[tool]["vm"].append(tv)
    med = statistics.median
    rows = [("what", "qemu-i386", "denali", "denali / qemu (median of rounds)")]
    rows.append(
        ("getpid, us per call", f"{med(g_q) / 1000:.3f}", f"{med(g_d) / 1000:.3f}", f"{med(ratios_g):.1f}x")
    )
    for tool in ("sha256sum", "gzip"):
        r = res[tool]
        cli = [c / q for c, q in zip(r["cli"], r["qemu"], strict=True)]
        vm = [v / q for v, q in zip(r["vm"], r["qemu"], strict=True)]
        rows.append(
            (
                f"{tool} {size >> 20} MiB, whole process (s)",
                f"{med(r['qemu']):.3f}",
                f"{med(r['cli']):.3f}",
                f"{med(cli):.2f}x",
            )
        )
        rows.append(
            (
                f"{tool} {size >> 20} MiB, VM in a running kernel (s)",
                f"{med(r['qemu']):.3f}",
                f"{med(r['vm']):.3f}",
                f"{med(vm):.2f}x",
            )
        )
    table(f"Linux programs: denali vs qemu-i386, {rounds} rounds alternating", rows)


async def bench_many(n: int, tmp: Path) -> None:
    src = tmp / "wait.c"
    src.write_text("#include <unistd.h>\nint main(void){char b[16];return read(0,b,sizeof b)==3?0:1;}\n")
    prog = build(src, tmp / "wait")
    before = rss_mib()
    async with Kernel() as k:
        t = time.perf_counter()
        vms = [await spawn_linux(k, prog, ["wait"], stdin=STREAM, nic=False) for _ in range(n)]
        for vm in vms:
            await vm.until_idle()
        spawn_s = time.perf_counter() - t
        rss = rss_mib() - before
        t = time.perf_counter()
        for vm in vms:
            await vm.console.write_input(b"go\n")
        codes = await asyncio.gather(*(vm.wait() for vm in vms))
        finish_s = time.perf_counter() - t
    ok = sum(1 for c in codes if c == 0)
    table(
        f"{n} Linux-program VMs in one kernel",
        [
            (
                "VMs",
                "all alive and idle after (s)",
                "RSS growth (MiB)",
                "per VM (MiB)",
                "exited 0",
                "finish (s)",
            ),
            (str(n), f"{spawn_s:.1f}", f"{rss:.0f}", f"{rss / n:.2f}", str(ok), f"{finish_s:.1f}"),
        ],
    )


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--vms", type=int, default=1000)
    p.add_argument("--size", type=int, default=16, help="MiB for sha256sum and gzip")
    p.add_argument("--skip-tools", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_tools:
            await bench_syscalls_and_tools(args.rounds, args.size << 20, tmp)
        if args.vms:
            await bench_many(args.vms, tmp)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
