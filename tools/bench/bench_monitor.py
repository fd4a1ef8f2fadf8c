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
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from common import table

from denali.cpu import VCpu
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


Measure = tuple[float, float]
"""(wall seconds, CPU seconds of the event loop's thread): every VM runs on that thread
(no workers), so its CPU time is the work done, and is far less disturbed than the wall
clock by other processes on a shared machine."""


async def run_alone(image: str, cmdline: str, monitors: Factory, native: bool = True) -> Measure:
    """One VM from spawn to its end (``native``: ``KernelConfig.native``)."""
    async with Kernel(native=native) as k:
        t, c = time.perf_counter(), time.thread_time()
        vm = await k.spawn(image, cmdline=cmdline, monitors=monitors())
        if await vm.wait() != 0:
            raise RuntimeError(vm.console.text())
        return time.perf_counter() - t, time.thread_time() - c


async def http(count: int, monitors: Factory, trace: Path | None = None) -> Measure:
    """httpget against httpd in one kernel: (wall, CPU) per request answered."""
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
        t, c = time.perf_counter(), time.thread_time()
        vm = await k.spawn(
            "httpget",
            cmdline=f"ip=10.0.0.2/24 url=http://10.0.0.1/bytes/2258 count={count} conc=10",
            monitors=stack(),
        )
        await vm.wait()
        wall, cpu = time.perf_counter() - t, time.thread_time() - c
        if writer is not None:
            await writer.aclose()
            if writer.dropped:
                print(f"  (tracer dropped {writer.dropped} of {writer.records + writer.dropped} lines)")
        m = re.search(r"ok=(\d+) fail=(\d+)", vm.console.text())
        if not m or int(m.group(1)) < count * 0.99:
            raise RuntimeError(vm.console.text())
        ok = int(m.group(1))
        return wall / ok, cpu / ok


def side_by_side(
    rounds: int, a: Callable[[], Measure], b: Callable[[], Measure]
) -> tuple[Measure, Measure, Measure]:
    """Alternate a and b for ``rounds`` rounds (A B, then B A, so neither always runs
    first): medians of a, of b, and of the per-round ratios b/a, each as (wall, CPU)."""
    av: list[Measure] = []
    bv: list[Measure] = []
    for r in range(rounds):
        if r % 2:
            bv.append(b())
            av.append(a())
        else:
            av.append(a())
            bv.append(b())

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    ma = (med([x[0] for x in av]), med([x[1] for x in av]))
    mb = (med([x[0] for x in bv]), med([x[1] for x in bv]))
    ratio = (
        med([y[0] / x[0] for x, y in zip(av, bv, strict=True)]),
        med([y[1] / x[1] for x, y in zip(av, bv, strict=True)]),
    )
    return ma, mb, ratio


async def hook_calls(n: int, monitors: Factory) -> int:
    """Python-level calls (profiler events) made inside the CPU's interrupt hook while
    bench-hcall makes n CLOCK hypercalls: the work of the hypercall path, call for call."""
    hook = VCpu.on_interrupt.__code__
    count = depth = 0

    def prof(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count, depth
        if event == "call" and frame.f_code is hook:
            depth += 1
        elif event == "return" and frame.f_code is hook:
            depth -= 1
        elif depth and event in ("call", "c_call"):
            count += 1

    async with Kernel() as k:
        vm = await k.spawn("bench-hcall", cmdline=f"n={n}", monitors=monitors())
        sys.setprofile(prof)
        try:
            await vm.wait()
        finally:
            sys.setprofile(None)
    return count


def pct(r: float) -> str:
    return f"{(r - 1) * 100:+.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds = max(1, args.rounds)
    alu_n = 50_000_000 if args.quick else 300_000_000
    reqs = 400 if args.quick else 2000
    hc_n = 50_000 if args.quick else 200_000
    rows = [("comparison", "A (wall / CPU)", "B (wall / CPU)", "B/A wall", "B/A CPU", "goal")]

    def add(what: str, a: Measure, b: Measure, r: Measure, unit: float, suffix: str, goal: str) -> None:
        rows.append(
            (
                what,
                f"{a[0] * unit:.2f} / {a[1] * unit:.2f} {suffix}",
                f"{b[0] * unit:.2f} / {b[1] * unit:.2f} {suffix}",
                pct(r[0]),
                pct(r[1]),
                goal,
            )
        )
        print(rows[-1], flush=True)

    for name, factory in (("3 x PassAll", three_all), ("3 x PassFaults", three_faults)):
        a, b, r = side_by_side(
            rounds,
            lambda: asyncio.run(run_alone("bench-alu", f"n={alu_n}", none)),
            lambda f=factory: asyncio.run(run_alone("bench-alu", f"n={alu_n}", f)),
        )
        add(f"bench-alu n={alu_n:,}: none vs {name}", a, b, r, 1, "s", "<= 2%")
    for name, factory in (("3 x PassAll on each VM", three_all), ("3 x PassFaults on each VM", three_faults)):
        a, b, r = side_by_side(
            rounds, lambda: asyncio.run(http(reqs, none)), lambda f=factory: asyncio.run(http(reqs, f))
        )
        add(f"HTTP, {reqs} requests: none vs {name}", a, b, r, 1e6, "us/req", "<= 2%")
    with tempfile.TemporaryDirectory(prefix="denali-bench-trace-") as d:
        path = Path(d) / "trace.jsonl"
        a, b, r = side_by_side(
            rounds, lambda: asyncio.run(http(reqs, none)), lambda: asyncio.run(http(reqs, none, trace=path))
        )
        with path.open() as f:
            lines = sum(1 for _ in f)
    add(
        f"HTTP, {reqs} requests: none vs the tracer on both VMs ({lines:,} lines)",
        a,
        b,
        r,
        1e6,
        "us/req",
        "<= 20%",
    )
    table(
        "Monitor overheads (alternating rounds; medians of per-round ratios; time per request for HTTP)", rows
    )

    cost_rows = [
        (
            "stack on bench-hcall (CLOCK in a loop)",
            "per hypercall, plain: native / pure Python (CPU)",
            "added per hypercall to native (CPU)",
            "added to pure Python, per monitor",
        )
    ]
    for name, factory, depth in (
        ("1 x PassAll", one_all, 1),
        ("3 x PassAll", three_all, 3),
        ("3 x PassFaults", three_faults, 3),
    ):
        added, added_py, base, base_py = [], [], [], []
        for _ in range(rounds):  # a monitor on CLOCK takes it off the native path: both bases
            t0 = asyncio.run(run_alone("bench-hcall", f"n={hc_n}", none))[1]
            t0p = asyncio.run(run_alone("bench-hcall", f"n={hc_n}", none, native=False))[1]
            t1 = asyncio.run(run_alone("bench-hcall", f"n={hc_n}", factory))[1]
            base.append(t0 / hc_n)
            base_py.append(t0p / hc_n)
            added.append((t1 - t0) / hc_n)
            added_py.append((t1 - t0p) / hc_n)
        a_, ap = statistics.median(added), statistics.median(added_py)
        cost_rows.append(
            (
                name,
                f"{statistics.median(base) * 1e6:.2f} / {statistics.median(base_py) * 1e6:.2f} us",
                f"{a_ * 1e6:.2f} us",
                f"{ap / depth * 1e6:.2f} us" if "PassAll" in name else "-",
            )
        )
        print(cost_rows[-1], flush=True)
    table(f"Cost of an interposed hypercall (n={hc_n:,}, medians of {rounds} alternating rounds)", cost_rows)

    calls = [("stack", "Python calls in the CPU hook per hypercall")]
    for name, factory in (
        ("none", none),
        ("3 x PassFaults", three_faults),
        ("1 x PassAll", one_all),
        ("3 x PassAll", three_all),
    ):
        per = (asyncio.run(hook_calls(3000, factory)) - asyncio.run(hook_calls(1000, factory))) / 2000
        calls.append((name, f"{per:.2f}"))
    table("The hypercall path, call for call (deterministic)", calls)


if __name__ == "__main__":
    main()
