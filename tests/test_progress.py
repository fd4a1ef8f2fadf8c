"""BootProgress counts VMs spawned and started (or shows counts given to it); JobProgress
shows one long job. Both render a live bar on a terminal and plain lines elsewhere."""

from __future__ import annotations

import asyncio
import io

from denali.kernel import Kernel
from denali.progress import BootProgress, JobProgress
from tests.conftest import need_image
from tests.net.helpers import FakeClock


async def test_counts_and_plain_lines() -> None:
    need_image("test-idle")
    out = io.StringIO()
    async with Kernel() as k:
        p = BootProgress(5, out, live=False, interval=0.01)
        assert p.line().startswith("denali: spawned 0/5, started 0/5")
        vms = [await k.spawn("test-idle", cmdline="ms=100000 wait=host") for _ in range(5)]
        for vm in vms:
            p.add(vm)
        assert not p.finished() or p.counts() == (5, 5)
        await p.run()  # returns once all five ran their first slice
        assert p.counts() == (5, 5) and p.finished()
    assert "spawned 5/5, started 5/5" in out.getvalue().splitlines()[-1]


async def test_live_bar_renders_and_close_stops_it() -> None:
    need_image("test-idle")
    out = io.StringIO()
    async with Kernel() as k:
        p = BootProgress(3, out, live=True)
        p.add(await k.spawn("test-idle", cmdline="ms=100000 wait=host"))
        p.close()  # two VMs were never spawned: close() must still end run()
        await p.run()
    assert "spawned" in out.getvalue() and "1/3" in out.getvalue()


async def test_figures_from_elsewhere_a_hosts_members() -> None:
    """A host of several kernels shows its members' sums: ``counts`` instead of ``add``."""
    out = io.StringIO()
    figures = [(0, 0)]
    p = BootProgress(4, out, live=False, interval=0.01, counts=lambda: figures[-1])
    assert p.line().startswith("denali: spawned 0/4, started 0/4")
    figures.append((4, 3))
    assert not p.finished() and "spawned 4/4, started 3/4" in p.line()
    shown = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.05)
    assert not shown.done() and "spawned 4/4, started 3/4" in out.getvalue().splitlines()[-1]
    figures.append((4, 4))
    await asyncio.wait_for(shown, 5)  # returns once the figures say all started
    assert p.finished()


def test_job_plain_lines_only_after_the_delay_and_at_intervals() -> None:
    clock = FakeClock(100.0)
    out = io.StringIO()
    job = JobProgress("packing x.img", 4 << 20, out, live=False, interval=1.0, delay=1.0, clock=clock)
    job.update(1 << 20)
    clock.t += 0.5
    job.update(2 << 20)
    assert out.getvalue() == "" and not job.shown  # under a second: nothing yet
    clock.t += 0.6
    job.update(3 << 20)
    clock.t += 0.3
    job.advance(1 << 19)  # within the interval: no new line
    assert out.getvalue() == "denali: packing x.img: 3.0 MiB/4.0 MiB (75%), 1.1 s, 2.7 MiB/s\n"
    clock.t += 0.2
    job.update(4 << 20)
    job.close()
    job.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert lines[-1] == "denali: packing x.img: 4.0 MiB/4.0 MiB (100%), 1.6 s, 2.5 MiB/s"
    assert len(lines) == 2  # at 1.1 s, then (within the interval) only the last line at close


def test_job_quick_is_silent_and_counts_other_units() -> None:
    clock = FakeClock()
    out = io.StringIO()
    with JobProgress("quick", 10, out, live=False, clock=clock) as job:
        job.update(10)
    assert out.getvalue() == "" and not job.shown
    slow = JobProgress("bench", 6, out, unit="rounds", live=False, clock=clock)
    clock.t += 2
    slow.advance(2)
    slow.close()
    assert out.getvalue().splitlines() == ["denali: bench: 2/6 rounds (33%), 2.0 s"]  # not twice


def test_job_live_bar_renders() -> None:
    clock = FakeClock()
    out = io.StringIO()
    with JobProgress("packing big.img", 8 << 20, out, live=True, clock=clock) as job:
        job.update(1 << 20)
        assert not job.shown
        clock.t += 1.5
        job.update(8 << 20)
        assert job.shown
    text = out.getvalue()
    assert "packing big.img" in text and "8.0/8.0 MiB" in text
