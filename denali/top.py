"""``denali top``: a live table of a kernel's VMs, read from its metrics endpoint.

The table shows per VM: state, swap state, CPU share (slices in the last interval over
all slices), slices, hypercalls, interrupts raised and delivered batches, frames in and
out, console bytes. Rendering is separate from fetching so it can be tested on data.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rich.table import Table


def render(snap: dict[str, Any], previous: dict[int, int] | None = None, limit: int = 40) -> Table:
    """A rich Table of a ``denali.metrics.snapshot``; CPU share from the slice deltas."""
    k = snap["kernel"]
    vms = snap["vms"]
    prev = previous or {}
    deltas = {vm["id"]: vm["slices"] - prev.get(vm["id"], vm["slices"]) for vm in vms}
    total = sum(deltas.values()) or 1
    title = (f"denali: {k['vms']} VMs {k['vm_states']}  switches {k['cpu_switches']}  "
             f"swap out/in {k['swap']['swap_outs']}/{k['swap']['swap_ins']}  "
             f"LAN frames {k['switch']['frames']}")
    t = Table(title=title)
    for col in ("VM", "image", "state", "swap", "CPU %", "slices", "hypercalls", "irqs", "batches",
                "frames in", "frames out", "console B"):
        t.add_column(col, justify="right" if col not in ("image", "state", "swap") else "left")
    rows = sorted(vms, key=lambda v: -deltas[v["id"]])[:limit]
    for vm in rows:
        nic = vm["nic"] or {}
        t.add_row(str(vm["id"]), vm["image"], vm["state"], "out" if vm["swapped"] else "in",
                  f"{100 * deltas[vm['id']] / total:.0f}", str(vm["slices"]), str(vm["hypercalls"] or 0),
                  str(vm["irqs_raised"]), str(vm["irq_batches"]), str(nic.get("rx_frames", "-")),
                  str(nic.get("tx_frames", "-")), str(vm["console_bytes"]))
    return t


async def fetch(host: str, port: int) -> dict[str, Any]:
    """GET /vms.json from a kernel's metrics endpoint."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        writer.write(b"GET /vms.json HTTP/1.1\r\nHost: denali\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    result: dict[str, Any] = json.loads(body)
    return result


async def run(host: str, port: int, interval: float = 1.0) -> None:
    """Refresh the table every ``interval`` seconds until cancelled."""
    from rich.live import Live

    prev: dict[int, int] = {}
    with Live(auto_refresh=False) as live:
        while True:
            snap = await fetch(host, port)
            live.update(render(snap, prev), refresh=True)
            prev = {vm["id"]: vm["slices"] for vm in snap["vms"]}
            await asyncio.sleep(interval)
