"""Paper experiment (c): idle-with-timeout vs busy polling, seen by a CPU-bound VM.

Usage: python tools/bench/paper_idle.py [--quick]

One kernel per point (slices on the event loop, 2 ms slices): N "server" VMs plus one
worker (bench-alu) that does a fixed number of loop iterations; its throughput is
iterations / (spawn to exit). Two modes for the servers, measured in one run:

- idle: udpecho VMs (the guest TCP/IP stack's threads all blocked, so the VM sits in
  the IDLE hypercall); every 10 ms each is woken by a TIMER interrupt (raised by the
  host exactly as the VM's one-shot timer would), runs its thread scheduler and goes
  back to idle-with-timeout.
- poll: test-spin VMs. No guest busy-polls the time virtual register, and guests may
  not be added here; test-spin is equivalent: the register only changes at a slice
  start, so a guest polling it for a deadline spins to the end of every slice it gets,
  exactly as test-spin does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics

from common import progress
from figures import Figure, Series, write_figure

from denali.abi import Irq
from denali.kernel import Kernel
from denali.vm import Vm

PERIOD = 0.010


async def ticker(vms: list[Vm], period: float) -> None:
    """Raise TIMER on every VM once per ``period``, spread evenly over the period."""
    loop = asyncio.get_running_loop()
    t0, done, n = loop.time(), 0, len(vms)
    while True:
        due = int((loop.time() - t0) / period * n)
        done = max(done, due - n)  # after a stall a VM wakes once, as its timer would
        while done < due:
            vms[done % n].interrupt(Irq.TIMER)
            done += 1
        await asyncio.sleep(0.001)


async def point(mode: str, n: int, iters: int) -> tuple[float, float]:
    """Worker iterations per second, and server wake-ups per second."""
    async with Kernel() as k:
        if mode == "idle":
            servers = [
                await k.spawn("udpecho", memory="4M", cmdline=f"ip=10.0.{i // 250}.{i % 250 + 1}/16")
                for i in range(n)
            ]
            for vm in servers:
                await vm.until_idle()
            await asyncio.sleep(0.2)  # boot-time ARP announcements settle
            for vm in servers:
                await vm.until_idle()
        else:
            servers = [await k.spawn("test-spin", memory="1M", nic=False) for _ in range(n)]
        idles0 = sum(vm.stats["idles"] for vm in servers)
        tick = asyncio.create_task(ticker(servers, PERIOD)) if mode == "idle" else None
        worker = await k.spawn("bench-alu", memory="1M", nic=False, cmdline=f"n={iters}")
        status = await worker.wait()
        if tick is not None:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
        assert status == 0 and worker.ended_ns is not None
        secs = (worker.ended_ns - worker.created_ns) / 1e9
        wakes = sum(vm.stats["idles"] for vm in servers) - idles0
        return iters / secs, wakes / secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    ns = [1, 10, 50] if args.quick else [1, 10, 50, 100, 200]
    window, runs = (0.6, 1) if args.quick else (1.5, 3)
    solo = statistics.median(asyncio.run(point("poll", 0, 600_000_000))[0] for _ in range(runs))
    print(f"worker alone: {solo / 1e6:,.0f} M iterations/s")
    idle: list[float | None] = []
    poll: list[float | None] = []
    wakes: list[float] = []
    shown = progress("paper_idle", len(ns) * runs)
    for n in ns:
        ri: list[float] = []
        rp: list[float] = []
        rw: list[float] = []
        for _ in range(runs):  # alternate, so drift in machine speed hits both modes alike
            r, w = asyncio.run(point("idle", n, min(int(solo * window), 4_000_000_000)))
            ri.append(r)
            rw.append(w)
            rp.append(asyncio.run(point("poll", n, int(solo * window / (n + 1))))[0])
            shown.advance()
        r, p, w = statistics.median(ri), statistics.median(rp), statistics.median(rw)
        idle.append(r / 1e6)
        poll.append(p / 1e6)
        wakes.append(w)
        print(f"N={n}: idle {r / 1e6:,.1f} M/s ({w:,.0f} wakes/s), poll {p / 1e6:,.1f} M/s")
    shown.close()
    ratio: list[float | None] = [i / p for i, p in zip(idle, poll, strict=True) if i and p]
    fig = Figure(
        name="paper_idle",
        title="Idle-with-timeout vs busy polling: CPU-bound VM's throughput",
        xlabel="server VMs (N)",
        ylabel="worker M iterations/s (ratio: x)",
        x=ns,
        logy=True,
        series=[
            Series("idle-with-timeout (M iter/s)", idle),
            Series("busy polling (M iter/s)", poll, "s-"),
            Series("ratio idle / poll (x)", ratio, "^:"),
        ],
        notes=[
            f"Measured (medians of {runs} runs): the throughput of one bench-alu VM (alone: "
            f"{solo / 1e6:,.0f} M iterations/s) next to N server VMs that wait for a timer, either in "
            "the IDLE hypercall (udpecho, woken by a TIMER interrupt every 10 ms: "
            + ", ".join(f"{w:,.0f}" for w in wakes)
            + " wake-ups/s) or busy polling (test-spin, "
            "equivalent to polling the time virtual register, which only changes at slice starts).",
            "Paper (Denali, OSDI 2002): idle-with-timeout gives more than 2x over busy waiting; "
            f"ours: {ratio[0]:.1f}x at N={ns[0]} to {ratio[-1]:.0f}x at N={ns[-1]} (a poller takes a "
            "full 2 ms slice each turn, so the worker's share falls as 1/(N+1)).",
        ],
    )
    asked = [round(n / PERIOD) for n in ns]
    short = [
        f"{w:,.0f} of {a:,}/s at N={n}" for n, a, w in zip(ns, asked, wakes, strict=True) if w < 0.95 * a
    ]
    if short:
        fig.notes.append(
            "Where the kernel cannot serve every wake-up next to the worker, a TIMER raised "
            "while a VM still waits for the CPU merges with the pending one (delivered: "
            + "; ".join(short)
            + ")."
        )
    write_figure(fig)


if __name__ == "__main__":
    main()
