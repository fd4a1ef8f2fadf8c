"""Counters as data, Prometheus text over HTTP on loopback, and the denali top table."""

from __future__ import annotations

import asyncio

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
            await top.fetch("127.0.0.1", port, 1)  # starts a sampling interval
            await asyncio.sleep(0.1)
            snap = await top.fetch("127.0.0.1", port, 1)
            full = await top.fetch("127.0.0.1", port)
            try:
                await top.fetch("127.0.0.1", port, -1)
                raise AssertionError("a bad top= must be refused")
            except OSError as exc:
                assert "400" in str(exc)
        finally:
            server.close()
    assert {vm["id"] for vm in full["vms"]} == {spin.id, idle.id}
    [busiest] = snap["vms"]  # top=1: only the spinner, which had nearly all the CPU
    assert busiest["id"] == spin.id and busiest["cpu_pct"] > 30, busiest
    assert snap["kernel"]["vms"] == 2 and "port_stats" not in snap["kernel"]["switch"]
    out = "\n".join(top.render(full, 220).lines)
    assert "test-spin" in out and "test-idle" in out and "idle" in out
    rows = [line for line in out.splitlines() if "test-" in line]
    assert "test-spin" in rows[0] and "test-idle" in rows[1]  # busiest first
