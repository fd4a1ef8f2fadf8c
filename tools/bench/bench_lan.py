"""Scale on the LAN: N httpd VMs of 16 MiB in one kernel, every one answering ping and
HTTP from a Linux host on the LAN (a namespace behind a TAP device), with swap keeping
the idle ones out of RAM.

Usage: python tools/bench/bench_lan.py [--vms 10000] [--budget 3G] [--conc 256] [--sample K]
(root; ip from iproute2)

Boots N httpd VMs (each under the gatekeeper, idle ones swapped out to stay under the
budget), then lanload.py sweeps every address from the namespace: an ICMP echo and a
GET of a 2,258-byte document each, --conc hosts at a time. Every VM that is not
resident is swapped in by the frames that reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from common import rss_mib, table
from lan import LinuxHost, boot_httpd, vm_ip

from denali import lowlevel
from denali.config import parse_size
from denali.kernel import Kernel


async def run(n: int, budget: int, conc: int, sample: int) -> list[tuple[str, str]]:
    async with Kernel(memory_budget=budget, max_vms=max(n, 100_000)) as k, LinuxHost(k) as host:
        t = time.perf_counter()
        vms = await boot_httpd(k, n)
        boot = time.perf_counter() - t
        await host.neighbours(vms)
        before = dict(k.stats()["swap"])
        res = await host.load("sweep", vm_ip(1), str(n), "--conc", str(conc), "--sample", str(sample))
        asked = res["hosts"]
        sw = k.stats()["swap"]
        alive = sum(1 for vm in vms if not vm.state.final)
        swap_dir = lowlevel.runtime(k).store.directory  # type: ignore[union-attr]
        on_disk = sum(e.stat().st_blocks * 512 for e in os.scandir(swap_dir)) if swap_dir else 0
        st = k.switch.stats()
        rows = [
            ("httpd VMs (16 MiB address space each)", f"{n:,}"),
            ("booted, listening and idle", f"{boot:.1f} s ({n / boot:,.0f} VMs/s)"),
            ("VMs asked (all, or a random sample)", f"{asked:,}"),
            ("answered ping", f"{res['ping_ok']:,} of {asked:,}"),
            ("served GET /bytes/2258 (length checked)", f"{res['http_ok']:,} of {asked:,}"),
            (
                f"sweep time (ping + HTTP, {conc} at a time)",
                f"{res['seconds']:.1f} s ({asked / res['seconds']:,.0f} VMs/s)",
            ),
            (
                "ping round trip p50 / p99 (swap-in queue included)",
                f"{res['ping_ms']['p50']:,.0f} / {res['ping_ms']['p99']:,.0f} ms",
            ),
            (
                "HTTP connect+GET+close p50 / p99",
                f"{res['http_ms']['p50']:,.0f} / {res['http_ms']['p99']:,.0f} ms",
            ),
            (
                "swap-ins / swap-outs during the sweep",
                f"{sw['swap_ins'] - before['swap_ins']:,} / {sw['swap_outs'] - before['swap_outs']:,}",
            ),
            ("resident VMs at the end", f"{sum(1 for vm in vms if vm.swapped is None):,}"),
            ("process RSS at the end (budget)", f"{rss_mib():,.0f} MiB ({budget >> 20:,} MiB)"),
            ("swap files on disk (touched pages of the swapped VMs)", f"{on_disk / 2**20:,.0f} MiB"),
            ("switch: ARP answered / flooded frames", f"{st.arp_answered:,} / {st.flooded:,}"),
            ("VMs still running at the end", f"{alive:,} of {n:,}"),
        ]
        if res["ping_failed"] or res["http_failed"]:
            rows.append(("first failures", f"ping {res['ping_failed'][:5]} http {res['http_failed'][:5]}"))
            rows.append(("why HTTP failed", ", ".join(f"{k} x{v}" for k, v in res["reasons"].items())))
        return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10_000)
    ap.add_argument("--budget", default="3G")
    ap.add_argument("--conc", type=int, default=256)
    ap.add_argument("--sample", type=int, default=0, help="ask only this many VMs, drawn at random")
    args = ap.parse_args()
    rows = asyncio.run(run(args.vms, parse_size(args.budget), args.conc, args.sample))
    table("Every VM answers on the LAN", [("what", "figure"), *rows])


if __name__ == "__main__":
    main()
