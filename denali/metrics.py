"""The kernel's counters for observers: plain data, Prometheus text, and an HTTP endpoint.

``snapshot(kernel)`` is the data (kernel counters plus one row per VM);
``prometheus(kernel)`` the same as Prometheus text exposition; ``serve(kernel, host,
port)`` answers ``GET /metrics`` (Prometheus) and ``GET /vms.json`` (the snapshot) on a
small asyncio server the caller owns (close it with ``server.close()``). The server
only reads counters; it never changes kernel state.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from denali.kernel import Kernel


def snapshot(kernel: Kernel) -> dict[str, Any]:
    """Kernel counters and one dict per live VM (see ``Kernel.vm_stats``)."""
    return {"kernel": kernel.stats(), "vms": [kernel.vm_stats(vm) for vm in list(kernel.vms.values())]}


_VM_COUNTERS = ("slices", "preemptions", "idles", "irqs_raised", "irq_batches", "irq_bits_delivered",
                "console_bytes")


def prometheus(kernel: Kernel) -> str:
    """Prometheus text format (version 0.0.4) of the snapshot."""
    snap = snapshot(kernel)
    k = snap["kernel"]
    lines = ["# TYPE denali_vms gauge", f"denali_vms {k['vms']}"]
    for state, n in sorted(k["vm_states"].items()):
        lines.append(f'denali_vms_by_state{{state="{state}"}} {n}')
    for key in ("cpu_switches", "slices_started", "preempt_stops"):
        lines += [f"# TYPE denali_{key} counter", f"denali_{key} {k[key]}"]
    for key in ("swap_outs", "swap_ins", "bytes_out", "bytes_in"):
        lines.append(f"denali_swap_{key} {k['swap'][key]}")
    lines.append(f"denali_switch_frames {k['switch']['frames']}")
    for key in _VM_COUNTERS:
        lines.append(f"# TYPE denali_vm_{key} counter")
        for vm in snap["vms"]:
            lines.append(f'denali_vm_{key}{{vm="{vm["id"]}",image="{vm["image"]}"}} {vm[key]}')
    for vm in snap["vms"]:
        nic = vm["nic"]
        if nic is not None:
            labels = f'vm="{vm["id"]}"'
            lines.append(f"denali_vm_frames_in{{{labels}}} {nic['rx_frames']}")
            lines.append(f"denali_vm_frames_out{{{labels}}} {nic['tx_frames']}")
    return "\n".join(lines) + "\n"


async def serve(kernel: Kernel, host: str, port: int) -> asyncio.Server:
    """Start the metrics endpoint on host:port; the caller closes the returned server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path == b"/metrics":
                body, ctype, status = prometheus(kernel).encode(), "text/plain; version=0.0.4", "200 OK"
            elif path == b"/vms.json":
                body, ctype, status = json.dumps(snapshot(kernel)).encode(), "application/json", "200 OK"
            else:
                body, ctype, status = b"not found\n", "text/plain", "404 Not Found"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
