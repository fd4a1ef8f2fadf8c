"""Shared helpers for the benchmarks: timing, medians, tables, a bare Unicorn runner."""

from __future__ import annotations

import asyncio
import ctypes
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from denali import _uc, abi  # noqa: E402
from denali.cpu import layout_regions  # noqa: E402
from denali.images import resolve  # noqa: E402
from denali.kernel import Kernel  # noqa: E402
from denali.loader import Image  # noqa: E402
from denali.memory import GuestMemory  # noqa: E402
from denali.progress import JobProgress  # noqa: E402
from denali.swap import process_rss  # noqa: E402


def rss_mib() -> float:
    """This process's resident memory in MiB (the kernel's own reading of it)."""
    return process_rss() / 2**20


def progress(what: str, total: int, unit: str = "points") -> JobProgress:
    """Progress of a long benchmark run on stderr (a bar on a terminal, plain lines in a
    log); ``advance()`` it after each measured point, ``close()`` it (or use ``with``)."""
    return JobProgress(what, total, sys.stderr, unit=unit)


async def run_vms(image: str, cmdlines: list[str], **kernel_options: Any) -> float:
    """Wall seconds from the first spawn until every VM (one per command line, 4 MiB
    each) of ``image`` has ended, in a fresh kernel made with ``kernel_options``."""
    async with Kernel(**kernel_options) as k:
        t = time.perf_counter()
        vms = [await k.spawn(image, cmdline=c, memory="4M") for c in cmdlines]
        for vm in vms:
            await vm.wait()
        return time.perf_counter() - t


def per_op_once(image: str, n: int, vms: int, **kernel_options: Any) -> float:
    """Seconds per operation of a loop guest taking ``n=N``: (t(n) - t(1)) / (n - 1) / vms."""
    base = asyncio.run(run_vms(image, ["n=1"] * vms, **kernel_options))
    full = asyncio.run(run_vms(image, [f"n={n}"] * vms, **kernel_options))
    return (full - base) / (n - 1) / vms


def median_of(fn: Callable[[], float], runs: int) -> tuple[float, list[float]]:
    vals = [fn() for _ in range(runs)]
    return statistics.median(vals), vals


def table(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n## {title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


class BareGuest:
    """An image on a bare Unicorn engine configured as fast as it goes (no kernel).

    Same memory map, same TLB-fill permissions, same CPL-3 entry as the kernel; one
    emu_start to completion, stopped by the guest's TERMINATE. Every other hypercall
    returns OK without doing anything (the bench loops only print at the end).
    Instruction counting (``count_instructions``) adds a code hook: use it only to
    calibrate, never when timing.
    """

    def __init__(self, image: str | Image, cmdline: str, mem_size: int = abi.DEFAULT_MEMORY) -> None:
        from denali.cpu import CpuState, VCpu

        self.image = resolve(image) if isinstance(image, str) else image
        self.mem = GuestMemory(mem_size)
        regions, hs, he = layout_regions(self.image, mem_size)
        self.mem.set_regions(regions)
        for s in self.image.segments:
            self.mem.write(s.vaddr, s.data)
        cmd = cmdline.encode() + b"\0"
        self.mem.write(abi.Layout.VREGS + abi.CMDLINE_OFFSET, cmd)
        v = abi.VREGS.offsets()
        import struct

        struct.pack_into(
            "<IIII", self.mem.buf, abi.Layout.VREGS, abi.VREGS_MAGIC, abi.ABI_VERSION, 1, mem_size
        )
        struct.pack_into("<II", self.mem.buf, abi.Layout.VREGS + v["heap_start"], hs, he)
        struct.pack_into("<I", self.mem.buf, abi.Layout.VREGS + v["cmdline_len"], len(cmd) - 1)
        self.terminated = False

        def dispatch(nr: int, arg: int) -> int:
            if nr == abi.Hc.TERMINATE:
                self.terminated = True
                return -1
            return 0

        self.cpu = VCpu(
            1, self.image.name, self.mem, dispatch, 16 << 20, CpuState.boot(self.image.entry, mem_size)
        )

    def run(self) -> float:
        """Run to TERMINATE in one emu_start; returns seconds."""
        eng = self.cpu.engine
        t = time.perf_counter()
        err = eng.start(self.cpu.eip)
        dt = time.perf_counter() - t
        if err or not self.terminated:
            raise RuntimeError(f"bare run failed: {_uc.strerror(err)}")
        return dt

    def close(self) -> None:
        self.cpu.close()
        self.mem.close()


def count_instructions(image: str, cmdline: str) -> int:
    """Guest instructions executed from entry to TERMINATE (slow: a code hook)."""
    g = BareGuest(image, cmdline)
    n = ctypes.c_uint64(0)
    cb = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)(
        lambda uc, addr, size, ud: _bump(n)
    )
    hh = ctypes.c_size_t()
    _uc._lib.uc_hook_add(
        g.cpu.engine._h,
        ctypes.byref(hh),
        ctypes.c_int(1 << 2),
        cb,
        None,
        ctypes.c_uint64(1),
        ctypes.c_uint64(0),
    )
    g.run()
    g.close()
    return n.value


def _bump(n: ctypes.c_uint64) -> None:
    n.value += 1
