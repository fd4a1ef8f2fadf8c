"""Paper experiment (a): HTTP throughput vs number of VMs under a Zipf workload, and
the 10-minute soak of 10,000 VMs under that load.

Usage:
  python tools/bench/bench_zipf.py [--vms 100,300,1000,3000,10000] [--budget 1G]
                                   [--seconds 30] [--warmup 10] [--conc 64]
  python tools/bench/bench_zipf.py --soak 600 --vms 10000 --budget 3G
(root; ip from iproute2)

Each point: a fresh kernel with N httpd VMs of 16 MiB behind a TAP device, under one
memory budget; lanload.py in a Linux namespace sends GETs for 2,258-byte documents
(the paper's size), each to a VM drawn from a Zipf distribution (alpha 1) over the N
VMs, from --conc clients over keep-alive connections. Throughput is counted after
--warmup seconds. While the popular VMs fit in the budget, throughput holds; once
the requests' working set leaves memory, swap-ins (each a fresh engine that must
translate the guest's code again) set the pace. Writes docs/figures/zipf.{md,png}.

--soak S: one kernel of N VMs: all answer (ping + HTTP), then S seconds of the Zipf
load with memory and kernel counters sampled every 30 s, then all must answer again.
Prints the verdict (memory flat, no VM lost, every VM answers) and writes
docs/figures/soak.{md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from common import progress, rss_mib
from figures import Figure, Series, write_figure
from lan import LinuxHost, boot_httpd, vm_ip

from denali import lowlevel
from denali.config import parse_size
from denali.kernel import Kernel


def _scale(k: Kernel) -> float:
    """The gatekeeper's measured memory scale (see denali.swap.Gatekeeper.scale)."""
    gate = lowlevel.runtime(k).gate
    return gate.scale if gate is not None else 1.0


def zipf_args(n: int, seconds: float, conc: int, report: float) -> list[str]:
    return [
        "zipf",
        vm_ip(1),
        str(n),
        "--seconds",
        str(seconds),
        "--conc",
        str(conc),
        "--pool",
        "1024",
        "--report",
        str(report),
    ]


async def point(n: int, budget: int, seconds: float, warmup: float, conc: int) -> dict[str, Any]:
    async with Kernel(memory_budget=budget) as k, LinuxHost(k) as host:
        vms = await boot_httpd(k, n, progress=False)
        await host.neighbours(vms)
        lines: list[dict[str, Any]] = []
        marks: dict[str, dict[str, int]] = {}

        def on_line(line: dict[str, Any]) -> None:
            lines.append(line)
            if "t" in line and line["t"] >= warmup and "start" not in marks:
                marks["start"] = dict(k.stats()["swap"])

        summary = await host.load(*zipf_args(n, warmup + seconds, conc, 1.0), on_line=on_line)
        end = dict(k.stats()["swap"])
        measured = [ln for ln in lines if "t" in ln and ln["t"] > warmup]
        ok = sum(ln["ok"] for ln in measured)
        span = measured[-1]["t"] - warmup if measured else 1.0
        start = marks.get("start", end)
        resident = sum(1 for vm in vms if vm.swapped is None)
        lost = sum(1 for vm in vms if vm.state.final)
        return {
            "n": n,
            "req_s": ok / span,
            "swap_in_s": (end["swap_ins"] - start["swap_ins"]) / span,
            "errors": summary["errors"],
            "reasons": summary.get("reasons", {}),
            "resident": resident,
            "lost": lost,
            "scale": _scale(k),
        }


def experiment(args: argparse.Namespace) -> None:
    budget = parse_size(args.budget)
    counts = [int(x) for x in args.vms.split(",")]
    res = []
    with progress("bench_zipf", len(counts)) as shown:
        for n in counts:
            r = asyncio.run(point(n, budget, args.seconds, args.warmup, args.conc))
            print(
                f"  N={n:,}: {r['req_s']:,.0f} req/s, {r['swap_in_s']:,.1f} swap-ins/s, "
                f"{r['errors']} errors {r['reasons'] or ''}, {r['resident']:,} resident",
                flush=True,
            )
            res.append(r)
            shown.advance()
    fit = max(r["resident"] for r in res)
    write_figure(
        Figure(
            name="zipf",
            title="HTTP throughput vs number of VMs (Zipf popularity, 2,258-byte documents)",
            xlabel="VMs",
            ylabel="per second",
            x=counts,
            logx=True,
            fmt="{:,.0f}",
            series=[
                Series("requests/s", [r["req_s"] for r in res]),
                Series("swap-ins/s", [r["swap_in_s"] for r in res], "s--"),
            ],
            marks=[(fit, f"~{fit:,} VMs fit in {budget >> 20:,} MiB")],
            notes=[
                f"One kernel per point (slices on one core), memory budget {budget >> 20:,} MiB; the "
                f"load generator (lanload.py, {args.conc} clients, keep-alive, Zipf alpha 1) runs "
                "in a Linux namespace on the other core and reaches the VMs through a TAP device. "
                f"Measured for {args.seconds:g} s after {args.warmup:g} s of warm-up.",
                "Errors (requests that failed or timed out) per point: "
                + ", ".join(f"{r['n']:,}: {r['errors']}" for r in res)
                + "; VMs lost: "
                + ", ".join(f"{r['lost']}" for r in res)
                + ".",
                "Paper (Denali, Figure 9 of OSDI 2002): throughput holds while the working set of "
                "VMs fits in memory, then falls steeply once requests hit swapped-out VMs "
                "(their knee: about 1,000 VMs on a 1 GB machine).",
            ],
        )
    )


async def soak(n: int, budget: int, seconds: float, conc: int, every: float) -> bool:
    async with Kernel(memory_budget=budget) as k, LinuxHost(k) as host:
        t0 = time.perf_counter()
        vms = await boot_httpd(k, n)
        boot = time.perf_counter() - t0
        await host.neighbours(vms)
        first = await host.load("sweep", vm_ip(1), str(n), "--conc", "256")
        print(
            f"booted {n:,} in {boot:.0f} s; first sweep: {first['ping_ok']:,} ping, "
            f"{first['http_ok']:,} HTTP of {n:,} in {first['seconds']:.0f} s",
            flush=True,
        )
        samples: list[dict[str, Any]] = []
        rates: list[float] = []
        t_load = time.perf_counter()

        def on_line(line: dict[str, Any]) -> None:
            if "t" not in line:
                return
            rates.append(line["req_s"])
            sw = k.stats()["swap"]
            samples.append(
                {
                    "t": line["t"],
                    "req_s": line["req_s"],
                    "err": line["err"],
                    "rss": rss_mib(),
                    "alive": sum(1 for vm in vms if not vm.state.final),
                    "resident": sum(1 for vm in vms if vm.swapped is None),
                    "swap_ins": sw["swap_ins"],
                    "p99": line.get("p99_ms"),
                }
            )
            s = samples[-1]
            print(
                f"  t={s['t']:5.0f} s  {s['req_s']:7,.0f} req/s  err {s['err']}  RSS {s['rss']:,.0f} MiB  "
                f"alive {s['alive']:,}  resident {s['resident']:,}  swap-ins {s['swap_ins']:,}",
                flush=True,
            )

        summary = await host.load(*zipf_args(n, seconds, conc, every), on_line=on_line)
        load_s = time.perf_counter() - t_load
        last = await host.load("sweep", vm_ip(1), str(n), "--conc", "256")
        alive = sum(1 for vm in vms if not vm.state.final)
    half = len(samples) // 2
    early = max(s["rss"] for s in samples[1 : half + 1]) if half else samples[0]["rss"]
    late = max(s["rss"] for s in samples[half:])
    growth = (late - early) / early
    checks = {
        f"memory flat (max RSS of the 2nd half {late:,.0f} MiB vs 1st half {early:,.0f} MiB: "
        f"{growth:+.1%}, limit +5%)": growth <= 0.05,
        f"no VM lost ({alive:,} of {n:,} running)": alive == n,
        f"every VM answers at the end (ping {last['ping_ok']:,}, HTTP {last['http_ok']:,} of {n:,})": last[
            "ping_ok"
        ]
        == n
        and last["http_ok"] == n,
    }
    xs = [round(s["t"] / 60, 2) for s in samples]
    write_figure(
        Figure(
            name="soak",
            title=f"Soak: {n:,} VMs under Zipf load for {seconds / 60:.0f} minutes",
            xlabel="minutes",
            ylabel="requests/s  |  RSS (MiB)",
            x=xs,
            fmt="{:,.0f}",
            series=[
                Series("requests/s", [s["req_s"] for s in samples]),
                Series("process RSS (MiB)", [s["rss"] for s in samples], "s-"),
                Series("resident VMs", [s["resident"] for s in samples], "^-"),
            ],
            notes=[
                f"Budget {budget >> 20:,} MiB; {conc} clients; {summary['requests']:,} requests in "
                f"{load_s:.0f} s ({summary['req_s']:,.0f}/s), {summary['errors']:,} errors; "
                f"boot {boot:.0f} s; sweeps before/after: "
                f"{first['seconds']:.0f} s / {last['seconds']:.0f} s.",
                *(f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks.items()),
            ],
        )
    )
    verdict = all(checks.values())
    print(
        f"\nSOAK {'PASSED' if verdict else 'FAILED'}: "
        + "; ".join(f"{'ok' if ok else 'FAILED'} {what}" for what, ok in checks.items())
    )
    return verdict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", default="100,300,1000,3000,10000")
    ap.add_argument("--budget", default="1G")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--soak", type=float, default=0, help="run the soak for this many seconds")
    ap.add_argument("--every", type=float, default=30, help="soak sampling interval, seconds")
    args = ap.parse_args()
    if args.soak:
        ok = asyncio.run(soak(int(args.vms), parse_size(args.budget), args.soak, args.conc, args.every))
        raise SystemExit(0 if ok else 1)
    experiment(args)


if __name__ == "__main__":
    main()
