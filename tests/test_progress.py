"""BootProgress counts VMs spawned and started, and renders a live bar on a terminal."""

from __future__ import annotations

import io

from denali.kernel import Kernel
from denali.progress import BootProgress
from tests.conftest import need_image


async def test_counts_and_plain_lines() -> None:
    need_image("test-idle")
    out = io.StringIO()
    async with Kernel() as k:
        p = BootProgress(5, out, live=False, interval=0.01)
        assert p.line().startswith("denali: spawned 0/5, started 0/5")
        vms = [await k.spawn("test-idle", cmdline="ms=100000 wait=host") for _ in range(5)]
        for vm in vms:
            p.add(vm)
        assert not p.finished() or p.started() == 5
        await p.run()  # returns once all five ran their first slice
        assert p.started() == 5 and p.finished()
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
