"""Reproducer: Unicorn 2.1's uc_emu_stop from another thread can corrupt a running guest.

Usage: python tools/bench/linux/unicorn_async_stop.py [--interval-us N] [--trials N]

Builds stophash.c (a table-driven hash loop, no system calls) with gcc -m32, runs it in
a bare Unicorn engine (the Python binding, no denali code, no hooks but the final
`int $0x80`) once without stops for the reference result, then again while a second
thread calls emu_stop every N microseconds and the main thread restarts the engine at
the EIP it stopped at, which is how the kernel preempted slices before the stop flag and
block hook (denali/_preempt.c). Each trial prints ok or CORRUPT. Measured on 2026-12-03:
CORRUPT in most trials at 100 us.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc
from unicorn.x86_const import UC_X86_REG_EIP, UC_X86_REG_ESP

HERE = Path(__file__).resolve().parent
MEM = 4 << 20


def run(path: Path, interval_us: int | None) -> tuple[int, ...]:
    elf = ELFFile(open(path, "rb"))
    out = elf.get_section_by_name(".symtab").get_symbol_by_name("out")[0]["st_value"]
    mu = Uc(UC_ARCH_X86, UC_MODE_32)
    mu.mem_map(0, MEM)
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] < MEM:
            mu.mem_write(seg["p_vaddr"], seg.data())
    mu.reg_write(UC_X86_REG_ESP, MEM)
    done = [False]

    def intr(uc: Uc, intno: int, data: object) -> None:
        done[0] = True
        uc.emu_stop()

    mu.hook_add(UC_HOOK_INTR, intr)
    stop = [False]

    def hammer() -> None:
        while not stop[0]:
            mu.emu_stop()
            time.sleep(interval_us / 1e6 if interval_us else 0)

    t = threading.Thread(target=hammer)
    if interval_us:
        t.start()
    eip = elf["e_entry"]
    while not done[0]:
        mu.emu_start(eip, 0)
        eip = mu.reg_read(UC_X86_REG_EIP)
    stop[0] = True
    if interval_us:
        t.join()
    return struct.unpack("<4I", mu.mem_read(out, 16))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--interval-us", type=int, default=100)
    p.add_argument("--trials", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "stophash"
        subprocess.run(
            [
                "gcc",
                "-m32",
                "-O2",
                "-ffreestanding",
                "-nostdlib",
                "-static",
                "-fno-pic",
                "-no-pie",
                "-Wl,-Ttext=0x10000",
                "-Wl,-z,norelro",
                "-Wl,--build-id=none",
                "-Wl,-z,noseparate-code",
                "-o",
                str(exe),
                str(HERE / "stophash.c"),
            ],
            check=True,
        )
        ref = run(exe, None)
        print("reference", " ".join(f"{x:08x}" for x in ref))
        bad = 0
        for i in range(args.trials):
            got = run(exe, args.interval_us)
            bad += got != ref
            print(f"trial {i}: {'ok' if got == ref else 'CORRUPT'}")
        print(f"{bad} of {args.trials} trials corrupt with emu_stop every {args.interval_us} us")


if __name__ == "__main__":
    main()
