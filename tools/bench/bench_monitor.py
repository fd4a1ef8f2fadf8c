"""What monitors cost: pass-through stacks, the tracer, one interposed hypercall.

Usage: python tools/bench/bench_monitor.py [--rounds 5] [--quick]

Every comparison runs its contenders side by side in this one process, alternating
(A, B, A, B, ...) for ``--rounds`` rounds, each in a fresh kernel; the figure is the
median of the per-round ratios. Contenders:

- bench-alu (register arithmetic, a handful of hypercalls): no monitor vs three stacked
  pass-through monitors;
- VM-to-VM HTTP (httpd and httpget in one kernel, 2,258-byte documents, 10 keep-alive
  connections): no monitor vs three pass-through monitors stacked on each VM; and no
  monitor vs the tracer on both VMs (default kinds, JSON lines to a temporary file);
- the cost of one interposed hypercall: bench-hcall (CLOCK in a loop), no monitor vs a
  stack of 1 and of 3 pass-through monitors, as (t_monitored - t_plain) / n.

Two kinds of pass-through monitor are measured: ``PassAll`` overrides every hook (so
every hypercall, interrupt, frame and disk request goes through three Python calls
per monitor and back), and ``PassFaults`` interposes on faults only (a debugger
waiting for a crash, a checkpointer watching termination): the events it does not
interpose on keep the kernel's direct path.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import table

from denali.kernel import Kernel
from denali.monitor import FaultEvent, HypercallEvent, Monitor
from denali.monitor.base import FaultVerdict, Verdict
from denali.monitor.tracer import Tracer, TraceWriter

Factory = Callable[[], Sequence[Monitor]]


class PassAll(Monitor):
    """Interposes on every kind and changes nothing."""

    def hypercall(self, call: HypercallEvent) -> Verdict:
        return None

    def hypercall_done(self, call: HypercallEvent, result: int) -> int:
        return result

    def interrupt(self, bits: int) -> int:
        return bits

    async def fault(self, event: FaultEvent) -> FaultVerdict:
        return None

    def frame_out(self, frame: bytes) -> bytes | int | None:
        return frame

    def frame_in(self, frame: bytes) -> bytes | None:
        return frame


class PassFaults(Monitor):
    """Interposes on faults only."""

    async def fault(self, event: FaultEvent) -> FaultVerdict:
        return None


def none() -> list[Monitor]:
    return []


def three_all() -> list[Monitor]:
    return [PassAll(), PassAll(), PassAll()]


def one_all() -> list[Monitor]:
    return [PassAll()]


def three_faults() -> list[Monitor]:
    return [PassFaults(), PassFaults(), PassFaults()]


async def run_alone(image: str, cmdline: str, monitors: Factory) -> float:
    """Seconds from spawn to the end of one VM."""
    async with Kernel() as k:
        t = time.perf_counter()
        vm = await k.spawn(image, cmdline=cmdline, monitors=monitors())
        if await vm.wait() != 0:
            raise RuntimeError(vm.console.text())
        return time.perf_counter() - t


async def http(count: int, monitors: Factory, trace: Path | None = None) -> float:
    """Requests per second, httpget against httpd in one kernel."""
    async with Kernel() as k:
        writer = TraceWriter(trace) if trace is not None else None
        if writer is not None:
            await writer.open()

        def stack() -> list[Monitor]:
            ms = list(monitors())
            if writer is not None:
                ms.append(Tracer(writer))
            return ms

        await k.spawn("httpd", cmdline="ip=10.0.0.1/24", monitors=stack())
        t = time.perf_counter()
        vm = await k.spawn("httpget", cmdline=f"ip=10.0.0.2/24 url=http://10.0.0.1/bytes/2258 "
                           f"count={count} conc=10", monitors=stack())
        status = await vm.wait()
        wall = time.perf_counter() - t
        if writer is not None:
            await writer.aclose()
            if writer.dropped:
                print(f"  (tracer dropped {writer.dropped} of {writer.records + writer.dropped} lines)")
        m = re.search(r"ok=(\d+) fail=(\d+)", vm.console.text())
        if status != 0 or not m or int(m.group(2)):
            raise RuntimeError(vm.console.text())
        return count / wall


def side_by_side(rounds: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float, float]:
    """Alternate a and b for ``rounds`` rounds: (median a, median b, median of b/a)."""
    av, bv, ratios = [], [], []
    for _ in range(rounds):
        x, y = a(), b()
        av.append(x)
        bv.append(y)
        ratios.append(y / x)
    return statistics.median(av), statistics.median(bv), statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds = max(1, args.rounds)
    alu_n = 50_000_000 if args.quick else 300_000_000
    reqs = 400 if args.quick else 2000
    hc_n = 50_000 if args.quick else 200_000
    rows = [("comparison", "A", "B", "median B/A", "overhead", "goal")]

    def pct(r: float) -> str:
        return f"{(r - 1) * 100:+.1f}%"

    for name, factory in (("3 x PassAll", three_all), ("3 x PassFaults", three_faults)):
        ta, tb, r = side_by_side(rounds, lambda: asyncio.run(run_alone("bench-alu", f"n={alu_n}", none)),
                                 lambda f=factory: asyncio.run(run_alone("bench-alu", f"n={alu_n}", f)))
        rows.append((f"bench-alu n={alu_n:,}: none vs {name}", f"{ta:.3f} s", f"{tb:.3f} s", f"{r:.3f}",
                     pct(r), "<= 2%"))
        print(rows[-1])
    for name, factory in (("3 x PassAll on each VM", three_all), ("3 x PassFaults on each VM", three_faults)):
        ra, rb, r = side_by_side(rounds, lambda: asyncio.run(http(reqs, none)),
                                 lambda f=factory: asyncio.run(http(reqs, f)))
        rows.append((f"HTTP {reqs} requests: none vs {name}", f"{ra:,.0f} req/s", f"{rb:,.0f} req/s",
                     f"{r:.3f}", pct(1 / r), "<= 2%"))
        print(rows[-1])
    with tempfile.TemporaryDirectory(prefix="denali-bench-trace-") as d:
        path = Path(d) / "trace.jsonl"
        ra, rb, r = side_by_side(rounds, lambda: asyncio.run(http(reqs, none)),
                                 lambda: asyncio.run(http(reqs, none, trace=path)))
        lines = sum(1 for _ in path.open())
    rows.append((f"HTTP {reqs} requests: none vs the tracer on both VMs ({lines:,} lines)",
                 f"{ra:,.0f} req/s", f"{rb:,.0f} req/s", f"{r:.3f}", pct(1 / r), "<= 20%"))
    print(rows[-1])
    table("Monitor overheads (alternating rounds, medians of per-round ratios)", rows)

    cost_rows = [("stack on bench-hcall (CLOCK loop)", "per hypercall, plain", "added per hypercall",
                  "per monitor")]
    for name, factory, depth in (("1 x PassAll", one_all, 1), ("3 x PassAll", three_all, 3),
                                 ("3 x PassFaults", three_faults, 3)):
        added, base = [], []
        for _ in range(rounds):
            t0 = asyncio.run(run_alone("bench-hcall", f"n={hc_n}", none))
            t1 = asyncio.run(run_alone("bench-hcall", f"n={hc_n}", factory))
            base.append(t0 / hc_n)
            added.append((t1 - t0) / hc_n)
        a = statistics.median(added)
        cost_rows.append((name, f"{statistics.median(base) * 1e6:.2f} us", f"{a * 1e6:.2f} us",
                          f"{a / depth * 1e6:.2f} us" if name.endswith("PassAll") else "-"))
        print(cost_rows[-1])
    table(f"Cost of an interposed hypercall (n={hc_n:,}, medians of {rounds} alternating rounds)", cost_rows)


if __name__ == "__main__":
    main()
