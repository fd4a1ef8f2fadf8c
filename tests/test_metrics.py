"""Counters as data, Prometheus text over HTTP on loopback, and the denali top table."""

from __future__ import annotations

import asyncio

from rich.console import Console

from denali import metrics, top
from denali.kernel import Kernel
from tests.conftest import need_image


async def test_metrics_endpoint_and_top_table() -> None:
    need_image("test-spin")
    async with Kernel() as k:
        spin = await k.spawn("test-spin")
        idle = await k.spawn("test-idle", cmdline="ms=100000")
        await idle.until_idle()
        await asyncio.sleep(0.05)
        server = await metrics.serve(k, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            text = (await reader.read()).decode()
            writer.close()
            assert "200 OK" in text
            assert "denali_vms 2" in text
            assert f'denali_vm_slices{{vm="{spin.id}",image="test-spin"}}' in text
            assert 'denali_vms_by_state{state="idle"} 1' in text
            first = await top.fetch("127.0.0.1", port)
            await asyncio.sleep(0.1)
            snap = await top.fetch("127.0.0.1", port)
        finally:
            server.close()
    assert {vm["id"] for vm in snap["vms"]} == {spin.id, idle.id}
    table = top.render(snap, {vm["id"]: vm["slices"] for vm in first["vms"]})
    console = Console(record=True, width=200)
    console.print(table)
    out = console.export_text()
    assert "test-spin" in out and "test-idle" in out and "idle" in out
    spin_row = next(line for line in out.splitlines() if "test-spin" in line)
    assert " 100 " in spin_row  # the spinner had every slice of the interval
