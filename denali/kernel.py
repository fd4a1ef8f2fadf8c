"""The isolation kernel: spawns VMs, shares the CPU among them, owns every task it starts.

Embedding::

    async with Kernel() as k:
        vm = await k.spawn("hello", memory="16M", cmdline="")
        status = await vm.wait()

The caller owns the event loop: the kernel never calls ``asyncio.run`` and never installs
uvloop (the CLI does both). Closing the kernel (leaving the ``async with``) kills every
VM still running and stops the preemption thread.

Lifecycle: ``created -> running (after start/__aenter__) -> closed``.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from denali import abi, personality
from denali.arbiter import CpuArbiter
from denali.config import KernelConfig, check_memory, parse_size
from denali.devices import nic as netdev
from denali.devices.console import ConsoleSink
from denali.devices.disk import device as diskdev
from denali.devices.disk.spec import DiskSpec
from denali.devices.nic import NicConfig, NicPort
from denali.errors import ConfigError, KernelClosedError, ResourceError
from denali.hypercalls import HypercallTable, core_table
from denali.images import resolve
from denali.loader import Image
from denali.net.switch import Switch, SwitchConfig
from denali.preempt import Preemptor
from denali.scheduler import Scheduler
from denali.swap import Swapper
from denali.vm import Vm


def _host_cpu_khz() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 1_000_000


def _map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530


def _disable_thp() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
    except (OSError, AttributeError):
        pass


class Kernel:
    """An isolation kernel living in the running event loop. See the module docstring."""

    def __init__(self, config: KernelConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = KernelConfig(**overrides)
        elif overrides:
            raise ConfigError("pass either a KernelConfig or keyword options, not both")
        self.config = config
        self.cpu_khz = config.cpu_khz or _host_cpu_khz()
        self.hypercalls: HypercallTable = core_table()
        netdev.register(self.hypercalls)
        diskdev.register(self.hypercalls)
        personality.register(self.hypercalls)  # [personality] SYSCALL_ENTRY, MEM_PROTECT, ...
        self._tasks: set[asyncio.Task[None]] = set()
        self.vms: dict[int, Vm] = {}
        self._ids = itertools.count(1)
        self._epoch = time.monotonic_ns()
        self._state = "created"
        self._loop: asyncio.AbstractEventLoop | None = None
        self.preemptor = Preemptor(poll_ns=min(500_000, config.slice_us * 500))
        self.lanes = [self.preemptor.new_lane() for _ in range(max(1, config.workers))]
        self._pool: ThreadPoolExecutor | None = None
        self._arbiter: CpuArbiter | None = None
        self.swapper = Swapper(config.memory_budget, config.swap_dir)
        """Swap area and gatekeeper (inactive without a memory budget)."""
        self.max_engines = config.max_engines or _map_count() // 8
        """VMs that may be resident at once (see KernelConfig.max_engines)."""
        self.swapper.max_resident = self.max_engines
        self.mac_tag = config.mac_tag if config.mac_tag is not None else os.urandom(1)[0]
        """Second byte of this kernel's VM MACs, so kernels joined by VXLAN or a TAP bridge
        do not hand out the same addresses."""
        self.switch = Switch(SwitchConfig() if config.batch_interrupts
                             else SwitchConfig(batch=1, frames_per_yield=1), name="lan0")
        """The virtual LAN every VM's NIC is attached to."""
        if config.disable_thp:
            _disable_thp()

    # ---- lifecycle ----
    async def __aenter__(self) -> Kernel:
        self.start()
        await self.switch.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Bind to the running loop and start the preemption thread."""
        if self._state == "closed":
            raise KernelClosedError("kernel is closed")
        if self._state == "running":
            return
        self._loop = asyncio.get_running_loop()
        self._arbiter = CpuArbiter(self._loop, Scheduler(), self.lanes)
        if self.config.workers:
            self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="denali-cpu")
        self.preemptor.start()
        self._state = "running"

    async def close(self) -> None:
        """Kill every VM, wait for them to end, stop the preemption thread; idempotent."""
        if self._state == "closed":
            return
        self._state = "closing"
        vms = list(self.vms.values())
        for vm in vms:
            vm.kill()
        for vm in vms:
            await asyncio.shield(vm._done)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.switch.aclose()
        await self.swapper.aclose()
        self.preemptor.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._state = "closed"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise KernelClosedError("kernel is not started (use 'async with Kernel()')")
        return self._loop

    @property
    def arbiter(self) -> CpuArbiter:
        assert self._arbiter is not None
        return self._arbiter

    # ---- observation ----
    def stats(self) -> dict[str, Any]:
        """A snapshot of the kernel's counters as plain data (safe to JSON-encode); the
        switch's per-port counters are left out (``vm_stats`` has each VM's NIC)."""
        states: dict[str, int] = {}
        for vm in self.vms.values():
            states[vm.state.value] = states.get(vm.state.value, 0) + 1
        return {
            "state": self._state,
            "vms": len(self.vms),
            "vm_states": states,
            "cpu_switches": self._arbiter.switches if self._arbiter else 0,
            "slices_started": sum(lane.starts for lane in self.lanes),
            "preempt_stops": sum(lane.stops for lane in self.lanes),
            "switch": {k: v for k, v in self.switch.stats(per_port=False).as_dict().items()
                       if k != "port_stats"},
            "swap": {**self.swapper.stats, "used": self.swapper.used, "budget": self.swapper.budget},
        }

    def vm_stats(self, vm: Vm) -> dict[str, Any]:
        """One VM's counters as plain data."""
        return {"id": vm.id, "image": vm.image.name, "state": vm.state.value,
                "pending": vm.pending, "swapped": vm.swapped is not None,
                "hypercalls": vm.hypercalls,
                **vm.stats, "console_bytes": vm.console.written,
                "nic": vm.nic.stats.as_dict() if vm.nic is not None else None}

    # ---- time ----
    @property
    def pool(self) -> ThreadPoolExecutor | None:
        """Worker threads that run slices (None: slices run on the loop's thread)."""
        return self._pool

    def now_ns(self) -> int:
        """The kernel's monotonic clock: ns since the kernel was created."""
        return time.monotonic_ns() - self._epoch

    def call_at_ns(self, deadline_ns: int, cb: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        """Run ``cb(*args)`` on the loop when the kernel clock reaches ``deadline_ns``."""
        loop = self.loop
        delay = (deadline_ns - self.now_ns()) / 1e9
        return loop.call_at(loop.time() + delay, cb, *args)

    # ---- VMs ----
    async def spawn(self, image: str | os.PathLike[str] | Image, *, memory: str | int = abi.DEFAULT_MEMORY,
                    cmdline: str = "", console: ConsoleSink | None = None, nic: bool = True,
                    nic_config: NicConfig | None = None, mac: bytes | str | None = None,
                    disks: Sequence[DiskSpec] = ()) -> Vm:
        """Create and start a VM running ``image`` (a built-in name, a path, or an Image).

        ``memory`` is the guest address-space size ("16M", bytes). ``console``, when
        given, receives every chunk the guest writes (otherwise read ``vm.console``).
        ``nic``: give the VM a NIC on the kernel's LAN (``kernel.switch``), MAC
        ``02:<kernel mac_tag>:`` + the VM id unless ``mac`` gives one; ``nic_config`` sets its queue
        bounds. ``disks``: the VM's
        virtual disks (``denali.devices.disk.DiskSpec``; ``DiskError`` when one cannot be opened).
        Raises ``ImageError``/``ConfigError`` for bad input, ``ResourceError`` when the
        host cannot hold another VM, ``KernelClosedError`` after close.
        """
        if self._state != "running":
            if self._state == "created":
                self.start()
            else:
                raise KernelClosedError("kernel is closed")
        img = image if isinstance(image, Image) else resolve(image)
        size = check_memory(parse_size(memory))
        img.check_fits(size)
        cmd = cmdline.encode()
        if len(cmd) > abi.CMDLINE_MAX or b"\0" in cmd:
            raise ConfigError(f"command line is longer than {abi.CMDLINE_MAX} bytes or has a NUL")
        if not self.swapper.enabled and len(self.vms) >= self.max_engines:
            raise ResourceError(f"{len(self.vms)} VMs are resident, the most this process can hold "
                                f"({self.max_engines}, from vm.max_map_count); raise vm.max_map_count "
                                "or set a memory budget so idle VMs swap out")
        if len(self.vms) >= self.config.max_vms:
            raise ConfigError(f"the kernel already runs max_vms={self.config.max_vms} VMs")
        await self.switch.start()
        vm_id = next(self._ids)
        port = None
        if nic:
            if mac is None:  # locally administered: 02, this kernel's tag, the VM id
                mac = bytes((0x02, self.mac_tag)) + vm_id.to_bytes(4, "big")
            port = NicPort(f"vm{vm_id}", mac, config=nic_config)
            self.switch.attach(port)  # NetError/ConfigError (a MAC in use) before anything else
        vdisks = None
        try:
            vdisks = await diskdev.open_disks(disks)
            vm = Vm(self, vm_id, img, size, cmdline, console, port.fixed_mac if port else None)
            self.swapper.create_area(vm_id, size)
        except BaseException:
            if vdisks is not None:
                await vdisks.aclose()
            if port is not None and port.switch is not None:
                self.switch.detach(port)
            raise
        vm.disks = vdisks
        if port is not None:
            port.on_rx = vm.raise_net_rx
            vm.nic = port
        self.vms[vm_id] = vm
        vm.start()
        return vm

    def vm_ended(self, vm: Vm) -> None:
        """Called by a VM as it ends."""
        self.vms.pop(vm.id, None)
        if vm.disks is not None:
            self._own(self.loop.create_task(vm.disks.aclose(), name=f"denali-disks-{vm.id}"))
        nic = vm.nic
        if nic is not None:
            nic.clear_rx()
            nic.on_rx = None
            if nic.switch is not None:
                if nic.ingress_pending and self._state == "running":
                    # frames the guest sent before it ended still go out
                    self._own(self.loop.create_task(self._detach_later(nic)))
                else:
                    self.switch.detach(nic)

    def _own(self, task: asyncio.Task[None]) -> None:
        """Keep a kernel-owned background task until it ends (close() cancels it)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _detach_later(self, nic: NicPort) -> None:
        try:
            await self.switch.join()
        finally:
            if nic.switch is not None:
                self.switch.detach(nic)
