"""``denali top``: a live table of a kernel's VMs, read from its metrics endpoint.

The title line has the kernel's totals (VMs by state, CPU switches, swap, LAN). The
table shows the VMs that used the most CPU in the last interval (the endpoint ranks
them, so a kernel of 10,000 VMs sends only those rows): state, swap state, CPU share
(time in slices over wall time), CPU time, slices, hypercalls, interrupts raised,
batches delivered and the interrupt bits they carried, frames in and out, console
bytes. Rendering is separate from fetching so it can be tested on data.

Guest instructions are not counted: Unicorn counts them only through a hook on every
instruction, which would slow every guest several times over; CPU time stands in.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rich.table import Table


def render(snap: dict[str, Any], limit: int = 40) -> Table:
    """A rich Table of a ``denali.metrics.snapshot`` (rows as ranked by the endpoint)."""
    k = snap["kernel"]
    vms = snap["vms"][:limit]
    sw = k["swap"]
    lan = k["switch"]
    states = ", ".join(f"{n:,} {s}" for s, n in sorted(k["vm_states"].items()))
    title = (f"denali: {k['vms']:,} VMs ({states})  switches {k['cpu_switches']:,}  "
             f"swap out/in {sw['swap_outs']:,}/{sw['swap_ins']:,}  "
             f"LAN frames {lan['frames']:,} (ARP answered {lan.get('arp_answered', 0):,})")
    t = Table(title=title)
    cols = ("VM", "image", "state", "swap", "CPU %", "CPU ms", "slices", "hypercalls", "irqs",
            "batches", "irq bits", "frames in", "frames out", "console B")
    for col in cols:
        t.add_column(col, justify="left" if col in ("image", "state", "swap") else "right")
    for vm in vms:
        nic = vm["nic"] or {}
        t.add_row(str(vm["id"]), vm["image"], vm["state"], "out" if vm["swapped"] else "in",
                  f"{vm.get('cpu_pct', 0):.1f}", f"{vm['cpu_ns'] / 1e6:,.1f}", f"{vm['slices']:,}",
                  f"{vm['hypercalls'] or 0:,}", f"{vm['irqs_raised']:,}", f"{vm['irq_batches']:,}",
                  f"{vm['irq_bits_delivered']:,}", f"{nic.get('rx_frames', '-')}",
                  f"{nic.get('tx_frames', '-')}", f"{vm['console_bytes']:,}")
    return t


async def fetch(host: str, port: int, top: int | None = None) -> dict[str, Any]:
    """GET /vms.json (``?top=N``: the N busiest VMs) from a kernel's metrics endpoint."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        query = f"?top={top}" if top is not None else ""
        writer.write(f"GET /vms.json{query} HTTP/1.1\r\nHost: denali\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        status = head.split(b"\r\n")[0].decode(errors="replace")
        raise OSError(f"metrics endpoint answered {status}")
    result: dict[str, Any] = json.loads(body)
    return result


async def run(host: str, port: int, interval: float = 1.0, limit: int = 40) -> None:
    """Refresh the table every ``interval`` seconds until cancelled."""
    from rich.live import Live

    with Live(auto_refresh=False) as live:
        while True:
            snap = await fetch(host, port, limit)
            live.update(render(snap, limit), refresh=True)
            await asyncio.sleep(interval)
