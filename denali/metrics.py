"""The kernel's counters for observers: plain data, Prometheus exposition, an HTTP endpoint.

``snapshot(kernel)`` is the data (kernel counters plus one row per VM); ``top(kernel,
sampler, limit)`` the same for the ``limit`` VMs that used the most CPU since the
sampler's previous call (what ``denali top`` shows). ``collect(kernel)`` builds the
Prometheus metric families and ``exposition(families)`` their text, through
``prometheus_client``'s own exposition code. ``serve(kernel, host, port)`` answers
``GET /metrics`` (Prometheus) and ``GET /vms.json[?top=N]`` (``top``) on an
``Endpoint`` (``denali.endpoint``: bounded connections, idle and slow-request limits)
the caller closes with ``await endpoint.close()``. Nothing here changes kernel state.

Prometheus conventions: every family has ``# HELP`` and ``# TYPE``; counters end in
``_total``; times are seconds and sizes bytes. **Per-VM series are bounded**: only the
``top_vms`` VMs (default 10) with the most CPU time since they started get series of
their own (labels ``vm`` and ``image``), chosen again at every scrape; every VM counts
in the aggregates (``denali_vms{state}`` and the ``denali_live_vms_*`` gauges, which sum
the live VMs and so fall when a VM ends). A kernel of 10,000 VMs therefore exports
about 150 series, not 100,000.

A scrape never holds the event loop for long: the VMs are read ``CHUNK`` at a time with
a yield to the loop between chunks (``collect`` and ``top`` are coroutines), so other
VMs' slices run while 10,000 VMs are counted.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from denali.endpoint import Endpoint, Limits, json_error

if TYPE_CHECKING:
    from denali.kernel import Kernel
    from denali.vm import Vm

log = logging.getLogger(__name__)

CHUNK: Final = 100
"""VMs read between two yields to the event loop."""
_ROWS_CHUNK: Final = 25
"""VM rows built between two yields (a row costs more than a count)."""
TOP_VMS: Final = 10
"""VMs with per-VM series (the busiest by CPU time)."""

_VM_COUNTERS: Final = (
    # (stats key, metric suffix, help, scale)
    ("cpu_ns", "cpu_seconds", "CPU time the VM's slices took (guest code and the hypercalls in them)", 1e-9),
    ("slices", "slices", "Time slices the VM ran", 1),
    ("preemptions", "preemptions", "Slices that ended because the VM used its whole slice", 1),
    ("idles", "idles", "Times the VM waited in idle-with-timeout", 1),
    ("irqs_raised", "interrupts_raised", "Virtual interrupts raised for the VM", 1),
    ("irq_batches", "interrupt_batches", "Batches of virtual interrupts delivered to the VM", 1),
    ("irq_bits_delivered", "interrupt_bits_delivered", "Interrupt bits those batches carried", 1),
    ("hypercalls", "hypercalls", "Hypercalls the VM made", 1),
    ("console_bytes", "console_bytes", "Bytes the VM wrote to its console", 1),
    ("rx_frames", "frames_received", "Frames delivered to the VM's NIC", 1),
    ("tx_frames", "frames_sent", "Frames the VM's NIC sent", 1),
)


async def _rows(kernel: Kernel, vms: Sequence[Vm]) -> list[dict[str, Any]]:
    rows = []
    for i, vm in enumerate(vms):
        rows.append(kernel.vm_stats(vm))
        if i % _ROWS_CHUNK == _ROWS_CHUNK - 1:
            await asyncio.sleep(0)
    return rows


class CpuSampler:
    """CPU share of each VM between two calls of ``sample``: the time its slices took
    over the wall time between the calls, in percent of one core."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._last: dict[int, int] = {}
        self._t = time.monotonic_ns()
        self.states: dict[str, int] = {}
        """VMs by state, counted by the last ``sample``."""

    async def sample(self, limit: int | None = None) -> list[dict[str, Any]]:
        """``Kernel.vm_stats`` rows plus ``cpu_pct``, busiest first (``limit`` of them);
        yields to the loop every ``CHUNK`` VMs."""
        now = time.monotonic_ns()
        wall = max(1, now - self._t)
        self._t = now
        last = self._last
        cur: dict[int, int] = {}
        scored: list[tuple[int, int, Vm]] = []
        states: dict[str, int] = {}
        for i, vm in enumerate(list(self.kernel.vms.values())):
            c = vm.stats["cpu_ns"]
            cur[vm.id] = c
            entry = (c - last.get(vm.id, 0), -vm.id, vm)
            if limit is None or len(scored) < limit:
                heapq.heappush(scored, entry)
            elif entry[:2] > scored[0][:2]:
                heapq.heapreplace(scored, entry)
            st = vm.state.value
            states[st] = states.get(st, 0) + 1
            if i % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)
        self._last = cur
        self.states = states
        best = sorted(scored, key=lambda e: e[:2], reverse=True)
        await asyncio.sleep(0)
        rows = await _rows(self.kernel, [vm for _, _, vm in best])
        wall_pct = 100 / wall
        for (d, _, _), row in zip(best, rows, strict=True):
            row["cpu_pct"] = round(d * wall_pct, 2)
        return rows


async def snapshot(kernel: Kernel, limit: int | None = None) -> dict[str, Any]:
    """Kernel counters and one dict per live VM (``Kernel.vm_stats``), ``limit`` of them."""
    vms = list(kernel.vms.values())
    states: dict[str, int] = {}
    for i, vm in enumerate(vms):
        states[vm.state.value] = states.get(vm.state.value, 0) + 1
        if i % CHUNK == CHUNK - 1:
            await asyncio.sleep(0)
    return {"kernel": _kernel_stats(kernel, states), "vms": await _rows(kernel, vms[:limit])}


def _kernel_stats(kernel: Kernel, states: dict[str, int]) -> dict[str, Any]:
    k = kernel.stats(vm_states=False)
    k["vm_states"] = states
    return k


async def top(kernel: Kernel, sampler: CpuSampler, limit: int | None) -> dict[str, Any]:
    """``snapshot`` data for the ``limit`` busiest VMs since the sampler's last call,
    busiest first, each with ``cpu_pct``."""
    rows = await sampler.sample(limit)
    await asyncio.sleep(0)
    return {"kernel": _kernel_stats(kernel, sampler.states), "vms": rows}


# ---------------------------------------------------------------- Prometheus

_IN_STATS: Final = frozenset(
    ("cpu_ns", "slices", "preemptions", "idles", "irqs_raised", "irq_batches", "irq_bits_delivered")
)


def _vm_value(vm: Vm, key: str) -> int:
    if key == "hypercalls":
        return vm.hypercalls
    if key == "console_bytes":
        return vm.console.written
    if key in ("rx_frames", "tx_frames"):
        port = vm.nic
        return int(getattr(port.stats, key)) if port is not None else 0
    return int(vm.stats[key])


async def collect(kernel: Kernel, top_vms: int = TOP_VMS) -> list[Metric]:
    """Every metric family of ``kernel`` (see the module docstring for the rules)."""
    vms = list(kernel.vms.values())
    states: dict[str, int] = {}
    stat_keys = [c[0] for c in _VM_COUNTERS if c[0] in _IN_STATS]
    sums = dict.fromkeys((c[0] for c in _VM_COUNTERS), 0)
    hypercalls = console = rx = tx = 0
    heap: list[tuple[int, int, Vm]] = []
    for i, vm in enumerate(vms):
        st = vm.state.value
        states[st] = states.get(st, 0) + 1
        stats = vm.stats
        for key in stat_keys:
            sums[key] += stats[key]
        hypercalls += vm.hypercalls
        console += vm.console.written
        port = vm.nic
        if port is not None:
            rx += port.stats.rx_frames
            tx += port.stats.tx_frames
        entry = (stats["cpu_ns"], -vm.id, vm)
        if len(heap) < top_vms:
            heapq.heappush(heap, entry)
        elif entry[:2] > heap[0][:2]:
            heapq.heapreplace(heap, entry)
        if i % CHUNK == CHUNK - 1:
            await asyncio.sleep(0)
    sums.update(hypercalls=hypercalls, console_bytes=console, rx_frames=rx, tx_frames=tx)
    await asyncio.sleep(0)
    busiest = [vm for _, _, vm in sorted(heap, key=lambda e: e[:2], reverse=True)]
    k = kernel.stats(vm_states=False)
    out: list[Metric] = []

    g = GaugeMetricFamily("denali_vms", "Live VMs by state", labels=["state"])
    for st in sorted(states):
        g.add_metric([st], states[st])
    out.append(g)
    for key, name, doc, scale in _VM_COUNTERS:
        out.append(
            GaugeMetricFamily(
                f"denali_live_vms_{name}",
                f"{doc}: the sum over the live VMs (falls when a VM ends)",
                value=sums[key] * scale,
            )
        )
    for key, name, doc, scale in _VM_COUNTERS:
        c = CounterMetricFamily(
            f"denali_vm_{name}",
            f"{doc}; only for the {top_vms} VMs with the most CPU time",
            labels=["vm", "image"],
        )
        for vm in busiest:
            c.add_metric([str(vm.id), vm.image.name], _vm_value(vm, key) * scale)
        out.append(c)
    await asyncio.sleep(0)
    out.append(
        GaugeMetricFamily(
            "denali_vm_series",
            "VMs exported with per-VM series (the busiest by CPU time)",
            value=len(busiest),
        )
    )
    for kkey, doc in (
        ("cpu_switches", "Times the CPU passed from one VM to another"),
        ("slices_started", "Time slices started on the preemption lanes"),
        ("preempt_stops", "Slices the watchdog stopped at their deadline"),
    ):
        out.append(CounterMetricFamily(f"denali_{kkey}", doc, value=k[kkey]))
    timers = k["timers"]
    if timers:
        out.append(
            GaugeMetricFamily(
                "denali_timers_armed", "Deadlines armed on the timer heap", value=timers["armed"]
            )
        )
        out.append(CounterMetricFamily("denali_timers_fired", "Deadlines that fired", value=timers["fired"]))
    sw = k["swap"]
    for skey, name, doc in (
        ("swap_outs", "swap_outs", "VMs written out to their swap files"),
        ("swap_ins", "swap_ins", "VMs read back from their swap files"),
        ("bytes_out", "swap_written_bytes", "Bytes written to swap files"),
        ("bytes_in", "swap_read_bytes", "Bytes read from swap files"),
    ):
        out.append(CounterMetricFamily(f"denali_{name}", doc, value=sw[skey]))
    out.append(
        GaugeMetricFamily(
            "denali_memory_charged_bytes",
            "Memory charged to resident VMs against the budget",
            value=sw["used"],
        )
    )
    if sw["budget"] is not None:
        out.append(GaugeMetricFamily("denali_memory_budget_bytes", "The memory budget", value=sw["budget"]))
    lan = k["switch"]
    out.append(
        CounterMetricFamily(
            "denali_switch_frames", "Frames the virtual switch forwarded", value=lan.get("frames", 0)
        )
    )
    # monitors' counters (policy violations, ...): every VM's, kept after it ends; per VM
    # for the busiest only, like the VM counters
    per_vm = [(vm, kernel.vm_stats(vm).get("monitors") or {}) for vm in busiest]
    for mkey, n in sorted(k.get("monitors", {}).items()):
        if not isinstance(n, int):
            continue
        out.append(
            CounterMetricFamily(
                f"denali_monitor_{mkey}",
                f"Monitors' {mkey.replace('_', ' ')}, summed over every VM since the kernel started",
                value=n,
            )
        )
        c = CounterMetricFamily(
            f"denali_vm_monitor_{mkey}",
            f"Monitors' {mkey.replace('_', ' ')} of "
            f"the VM; only for the {top_vms} VMs with the most CPU time",
            labels=["vm", "image"],
        )
        for vm, mon in per_vm:
            if isinstance(mon.get(mkey), int):
                c.add_metric([str(vm.id), vm.image.name], mon[mkey])
        out.append(c)
    return out


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


async def exposition_steps(families: Sequence[Metric], per_step: int = 8) -> bytes:
    """``exposition(families)``, ``per_step`` families at a time with a yield between
    (the text is the concatenation of each family's)."""
    parts = []
    for i in range(0, len(families), per_step):
        parts.append(exposition(families[i : i + per_step]))
        await asyncio.sleep(0)
    return b"".join(parts)


async def prometheus(kernel: Kernel, top_vms: int = TOP_VMS) -> str:
    """The text a scrape of ``kernel`` returns."""
    families = await collect(kernel, top_vms)
    await asyncio.sleep(0)
    return (await exposition_steps(families)).decode()


# ---------------------------------------------------------------- the endpoint


def routes(endpoint: Endpoint, kernel: Kernel, top_vms: int = TOP_VMS) -> None:
    """Add ``GET /metrics`` and ``GET /vms.json`` for ``kernel`` to ``endpoint``."""
    sampler = CpuSampler(kernel)

    async def metrics_page(request: web.Request) -> web.Response:
        families = await collect(kernel, top_vms)
        await asyncio.sleep(0)
        body = await exposition_steps(families)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def vms_json(request: web.Request) -> web.Response:
        raw = request.query.get("top", "")
        if raw and not raw.isdigit():
            return json_error(400, "bad_request", "top must be a number")
        data = await top(kernel, sampler, int(raw) if raw else None)
        return web.Response(body=json.dumps(data).encode(), content_type="application/json")

    endpoint.app.router.add_get("/metrics", metrics_page)
    endpoint.app.router.add_get("/vms.json", vms_json)


async def serve(
    kernel: Kernel, host: str, port: int, *, limits: Limits | None = None, top_vms: int = TOP_VMS
) -> Endpoint:
    """Start the metrics endpoint on exactly ``host:port`` (``OSError`` if it cannot be
    bound); the caller closes it (``await endpoint.close()``)."""
    endpoint = Endpoint(limits, name="metrics")
    routes(endpoint, kernel, top_vms)
    await endpoint.start_tcp(host, port)
    log.info("serving metrics at http://%s/metrics and /vms.json", endpoint.address)
    return endpoint
