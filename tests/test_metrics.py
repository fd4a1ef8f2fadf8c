"""Counters as data, Prometheus exposition over HTTP on loopback (checked with
prometheus_client's own parser), bounded per-VM series, and the denali top table."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from denali import metrics, top
from denali.kernel import Kernel
from tests.conftest import need_image


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    text = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    return text


async def test_metrics_endpoint_and_top_table() -> None:
    need_image("test-spin")
    async with Kernel() as k:
        spin = await k.spawn("test-spin")
        idle = await k.spawn("test-idle", cmdline="ms=100000")
        await idle.until_idle()
        await asyncio.sleep(0.05)
        server = await metrics.serve(k, "127.0.0.1", 0)
        port = server.port
        try:
            text = await _get(port, "/metrics")
            assert "200 OK" in text and "text/plain; version=0.0.4" in text
            body = text.split("\r\n\r\n", 1)[1]
            assert 'denali_vms{state="idle"} 1.0' in body
            assert f'denali_vm_slices_total{{image="test-spin",vm="{spin.id}"}}' in body
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
            await server.close()
    assert {vm["id"] for vm in full["vms"]} == {spin.id, idle.id}
    [busiest] = snap["vms"]  # top=1: only the spinner, which had nearly all the CPU
    assert busiest["id"] == spin.id and busiest["cpu_pct"] > 30, busiest
    assert snap["kernel"]["vms"] == 2 and "port_stats" not in snap["kernel"]["switch"]
    out = "\n".join(top.render(full, 220).lines)
    assert "test-spin" in out and "test-idle" in out and "idle" in out
    rows = [line for line in out.splitlines() if "test-" in line]
    assert "test-spin" in rows[0] and "test-idle" in rows[1]  # busiest first


async def test_exposition_follows_prometheus_conventions() -> None:
    """Every family has HELP and TYPE; counters end in _total; seconds, not ns; at 40 VMs
    only the 5 busiest have per-VM series, every VM counts in the aggregates."""
    need_image("test-swapsum")
    async with Kernel() as k:
        vms = [
            await k.spawn("test-swapsum", cmdline=f"kib={64 + 16 * i} rounds=2000", memory="2M")
            for i in range(40)
        ]
        await asyncio.sleep(0.3)
        for vm in vms:  # paused, their counters hold still while the scrape reads them
            await vm.pause()
        text = await metrics.prometheus(k, top_vms=5)
        cpu_ns = sum(vm.stats["cpu_ns"] for vm in vms)
        busiest = sorted(vms, key=lambda v: v.stats["cpu_ns"], reverse=True)[:5]
        for vm in vms:
            vm.kill()
    lines = text.splitlines()
    families = list(text_string_to_metric_families(text))  # prometheus_client's parser
    assert len(families) >= 30
    types = {ln.split()[2]: ln.split()[3] for ln in lines if ln.startswith("# TYPE ")}
    helps = {ln.split()[2] for ln in lines if ln.startswith("# HELP ")}
    assert set(types) == helps  # HELP and TYPE for every family
    for name, kind in types.items():
        assert kind in ("counter", "gauge"), name
        assert name.endswith("_total") == (kind == "counter"), name
    for ln in lines:
        if not ln.startswith("#"):
            assert ln.split("{")[0].split()[0] in types, ln  # every sample has its family
    samples = [s for f in families for s in f.samples]
    assert all(not s.name.endswith("_ns") and "nanosecond" not in s.name for s in samples)
    per_vm = {s.labels["vm"] for s in samples if "vm" in s.labels}
    assert len(per_vm) == 5  # bounded
    assert per_vm == {str(vm.id) for vm in busiest}
    by_state = {s.labels["state"]: s.value for s in samples if s.name == "denali_vms"}
    assert by_state == {"paused": 40}
    [live_cpu] = [s.value for s in samples if s.name == "denali_live_vms_cpu_seconds"]
    assert abs(live_cpu - cpu_ns / 1e9) < 0.05
    assert any(s.name == "denali_cpu_switches_total" for s in samples)


async def test_a_scrape_of_many_vms_yields_to_the_loop() -> None:
    """At 2,000 idle VMs a scrape and a top query each let the loop run at least once per
    ``CHUNK`` VMs (a ticker task counts its turns while they run). How long each stretch
    takes at 10,000 VMs is measured by tools/bench/bench_api.py, not here."""
    need_image("test-idle")
    async with Kernel() as k:
        vms = [await k.spawn("test-idle", cmdline="ms=600000", memory="1M") for _ in range(2000)]
        for vm in vms:
            await vm.until_idle()
        turns = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal turns
            while not stop.is_set():
                await asyncio.sleep(0)
                turns += 1

        t = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        text = await metrics.prometheus(k)
        scrape_turns, turns = turns, 0
        await metrics.top(k, metrics.CpuSampler(k), 20)
        top_turns = turns
        stop.set()
        await t
    assert 'denali_vms{state="idle"} 2000.0' in text
    least = 2000 // metrics.CHUNK
    assert scrape_turns >= least and top_turns >= least, (scrape_turns, top_turns)
