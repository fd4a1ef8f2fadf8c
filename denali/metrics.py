"""The kernel's counters for observers: plain data, Prometheus text, and an HTTP endpoint.

``snapshot(kernel)`` is the data (kernel counters plus one row per VM);
``prometheus(kernel)`` the same as Prometheus text exposition; ``serve(kernel, host,
port)`` answers ``GET /metrics`` (Prometheus) and ``GET /vms.json`` (the snapshot;
``/vms.json?top=N``: only the N VMs that used the most CPU since the previous request,
which is what ``denali top`` asks for, so a kernel of 10,000 VMs is not serialized
every second) on a small asyncio server the caller owns (close it with
``server.close()``). The server only reads counters; it never changes kernel state.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from denali.kernel import Kernel

log = logging.getLogger(__name__)


class CpuSampler:
    """CPU share of each VM between two calls of ``sample``: the time its slices took
    over the wall time between the calls, in percent of one core."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._last: dict[int, int] = {}
        self._t = time.monotonic_ns()

    def sample(self, limit: int | None = None) -> list[dict[str, Any]]:
        """``Kernel.vm_stats`` rows plus ``cpu_pct``, busiest first (``limit`` of them)."""
        now = time.monotonic_ns()
        wall = max(1, now - self._t)
        self._t = now
        last = self._last
        cur: dict[int, int] = {}
        scored = []
        for vm in list(self.kernel.vms.values()):
            c = vm.stats["cpu_ns"]
            cur[vm.id] = c
            scored.append((c - last.get(vm.id, 0), vm.id, vm))
        self._last = cur
        best = heapq.nlargest(limit, scored) if limit is not None else sorted(scored, reverse=True)
        return [{**self.kernel.vm_stats(vm), "cpu_pct": round(100 * d / wall, 2)} for d, _, vm in best]


def snapshot(kernel: Kernel, sampler: CpuSampler | None = None, limit: int | None = None) -> dict[str, Any]:
    """Kernel counters and one dict per live VM (see ``Kernel.vm_stats``); with a
    ``sampler``, rows carry ``cpu_pct`` and come busiest first, ``limit`` of them."""
    vms = (
        sampler.sample(limit)
        if sampler is not None
        else [kernel.vm_stats(vm) for vm in list(kernel.vms.values())[:limit]]
    )
    return {"kernel": kernel.stats(), "vms": vms}


_VM_COUNTERS = (
    "slices",
    "cpu_ns",
    "preemptions",
    "idles",
    "irqs_raised",
    "irq_batches",
    "irq_bits_delivered",
    "console_bytes",
)


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

    sampler = CpuSampler(kernel)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            target = request.split(b" ", 2)[1].decode("latin-1") if request.count(b" ") >= 2 else "/"
            url = urlsplit(target)
            query = parse_qs(url.query)
            top = query.get("top", [""])[0]
            if url.path == "/metrics":
                body, ctype, status = prometheus(kernel).encode(), "text/plain; version=0.0.4", "200 OK"
            elif url.path == "/vms.json" and (not top or top.isdigit()):
                snap = snapshot(kernel, sampler, int(top) if top else None)
                body, ctype, status = json.dumps(snap).encode(), "application/json", "200 OK"
            elif url.path == "/vms.json":
                body, ctype, status = b"top must be a number\n", "text/plain", "400 Bad Request"
            else:
                body, ctype, status = b"not found\n", "text/plain", "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.debug("metrics request not answered: %r", exc)  # the client's trouble, not ours
        except Exception as exc:  # a bug here must not go unseen, nor stop the server
            log.error("metrics request failed: %r", exc, exc_info=exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("serving metrics at http://%s:%d/metrics and /vms.json", host, port)
    return server
