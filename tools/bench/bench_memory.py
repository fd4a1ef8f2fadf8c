"""Resident memory per live VM, with transparent huge pages disabled (our default) and not.

Usage: python tools/bench/bench_memory.py [--vms 300] [--kib 200]

Each configuration runs in a fresh subprocess (THP is a per-process switch): boot N VMs
of test-touch, which touch K KiB of their heap and idle; resident memory (VmRSS) grows
by N * (per-VM overhead + K KiB). Goal: overhead <= 1 MiB per VM beyond touched pages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys

from common import ROOT, rss_mib, table


def rss_kib() -> float:
    return rss_mib() * 1024


async def child(vms: int, kib: int, thp_off: bool) -> dict[str, float]:
    from denali.abi import Irq
    from denali.kernel import Kernel

    async with Kernel(disable_thp=thp_off) as k:
        warm = await k.spawn("test-touch", cmdline=f"kib={kib}")
        await warm.until_idle()
        base = rss_kib()
        batch = [await k.spawn("test-touch", cmdline=f"kib={kib}") for _ in range(vms)]
        for vm in batch:
            await vm.until_idle()
        after = rss_kib()
        for vm in [warm, *batch]:
            vm.interrupt(Irq.HOST)
        for vm in [warm, *batch]:
            await vm.wait()
    per_vm = (after - base) / vms
    return {"per_vm_kib": per_vm, "overhead_kib": per_vm - kib}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=300)
    ap.add_argument("--kib", type=int, default=200)
    ap.add_argument("--child", choices=["on", "off"])
    args = ap.parse_args()
    if args.child:
        res = asyncio.run(child(args.vms, args.kib, args.child == "off"))
        print(json.dumps(res))
        return
    rows = [("transparent huge pages", "VMs", "touched per VM", "RSS per VM", "overhead per VM")]
    for mode, label in (("off", "disabled (denali default)"), ("on", "left as the host has it")):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--vms", str(args.vms), "--kib", str(args.kib)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(
            (
                label,
                str(args.vms),
                f"{args.kib} KiB",
                f"{r['per_vm_kib'] / 1024:.2f} MiB",
                f"{r['overhead_kib'] / 1024:.2f} MiB",
            )
        )
    table("Resident memory per live VM", rows)


if __name__ == "__main__":
    main()
