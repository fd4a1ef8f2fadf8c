"""The isolation kernel: spawns VMs, shares the CPU among them, owns every task it starts.

Embedding::

    async with Kernel() as k:
        vm = await k.spawn("hello", memory="16M", cmdline="")
        status = await vm.wait()

The caller owns the event loop: the kernel never calls ``asyncio.run`` and never installs
uvloop (the CLI does both). Closing the kernel (leaving the ``async with``) kills every
VM still running, waits for their devices to close and stops the preemption thread.

Lifecycle: ``created -> running (after start/__aenter__) -> closing -> closed``.
The parts and how they meet: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import time
import types
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Unpack

from denali import abi
from denali.arbiter import CpuArbiter
from denali.builder import VmSpec, build_vm
from denali.config import KernelConfig, KernelOptions, check_memory, parse_size
from denali.devices.clock import Clock
from denali.devices.console import Console, ConsoleSink
from denali.devices.disk.device import Disks
from denali.devices.disk.spec import DiskSpec
from denali.devices.nic import Nic, NicConfig, NicPort
from denali.devices.personality import Personality
from denali.errors import ConfigError, KernelClosedError, ResourceError
from denali.hypercalls import HypercallTable
from denali.images import resolve
from denali.loader import Image
from denali.net.ethernet import as_mac, mac_for_vm
from denali.net.impair import LinkSpec
from denali.net.switch import Switch, SwitchConfig
from denali.preempt import Preemptor
from denali.runtime import Runtime
from denali.scheduler import Scheduler
from denali.swap import Gatekeeper, SwapStore
from denali.tasks import TaskOwner
from denali.timers import Timers
from denali.vm import Vm

log = logging.getLogger(__name__)


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


_thp_logged = False


def _disable_thp() -> None:
    """Turn transparent huge pages off for this process (prctl); logged once when refused."""
    global _thp_logged
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(41, 1, 0, 0, 0) != 0:  # PR_SET_THP_DISABLE
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        if _thp_logged:
            return
        _thp_logged = True
        log.warning(
            "transparent huge pages stay on for this process (%s): each VM's engine "
            "will use more resident memory",
            exc,
        )


DEVICE_CLASSES: tuple[type[Any], ...] = (Vm, Clock, Console, Nic, Disks, Personality)
"""Everything that answers hypercalls, one per device slot."""


class Kernel:
    """An isolation kernel living in the running event loop. See the module docstring.

    ``Kernel(config)`` or ``Kernel(slice_us=..., workers=..., ...)`` with the fields of
    ``KernelConfig`` as keywords (not both). Raises ``ConfigError`` for bad settings
    (including a swap directory that is not a writable directory).
    """

    def __init__(self, config: KernelConfig | None = None, **options: Unpack[KernelOptions]) -> None:
        if config is None:
            config = KernelConfig(**options)
        elif options:
            raise ConfigError("pass either a KernelConfig or keyword options, not both")
        self.config = config
        self.cpu_khz = config.cpu_khz or _host_cpu_khz()
        self._table = HypercallTable.build(DEVICE_CLASSES)
        self._owner = TaskOwner("kernel")
        self._finishers = TaskOwner("kernel-cleanup")
        """Tasks that must finish, not be cancelled, at close (swap-file unlinks)."""
        self._vms: dict[int, Vm] = {}
        self._ids = itertools.count(1)
        self._state = "created"
        self._rt: Runtime | None = None
        self._preemptor = Preemptor(poll_ns=min(500_000, config.slice_us * 500))
        self._lanes = [self._preemptor.new_lane() for _ in range(max(1, config.workers))]
        self._pool: ThreadPoolExecutor | None = None
        self._store = (
            SwapStore(config.swap_dir, self._finishers) if config.memory_budget is not None else None
        )
        self._gate = (
            Gatekeeper(config.memory_budget, self._owner) if config.memory_budget is not None else None
        )
        self.max_engines = config.max_engines or _map_count() // 8
        """VMs that may be resident at once (see KernelConfig.max_engines)."""
        if self._gate is not None:
            self._gate.max_resident = self.max_engines
        self.mac_tag = config.mac_tag if config.mac_tag is not None else os.urandom(1)[0]
        """Second byte of this kernel's VM MACs, so kernels joined by VXLAN or a TAP bridge
        do not hand out the same addresses."""
        self.switch = Switch(
            SwitchConfig() if config.batch_interrupts else SwitchConfig(batch=1, frames_per_yield=1),
            name="lan0",
        )
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
        if self._state in ("closing", "closed"):
            raise KernelClosedError("kernel is closed")
        if self._state == "running":
            return
        loop = asyncio.get_running_loop()
        epoch = time.monotonic_ns()
        if self.config.workers:
            self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="denali-cpu")
        self._rt = Runtime(
            loop=loop,
            epoch_ns=epoch,
            timers=Timers(loop, lambda: time.monotonic_ns() - epoch),
            arbiter=CpuArbiter(loop, Scheduler(), self._lanes),
            pool=self._pool,
            table=self._table,
            store=self._store,
            gate=self._gate,
            owner=self._owner,
            slice_ns=self.config.slice_us * 1000,
            cpu_khz=self.cpu_khz,
            tcg_buffer=self.config.tcg_buffer,
        )
        self._preemptor.start()
        self._state = "running"

    async def close(self) -> None:
        """Kill every VM, wait for them and their devices, stop the preemption thread;
        idempotent. Disk errors at close are logged (``Vm.wait()`` raises them)."""
        if self._state == "closed":
            return
        self._state = "closing"
        vms = list(self._vms.values())
        for vm in vms:
            vm.kill()
        for vm in vms:
            await asyncio.shield(vm._done)
        if self._gate is not None:
            self._gate.cancel_waiters()
        await self._owner.aclose()
        await self.switch.aclose()
        await self._finishers.aclose(cancel=False)
        if self._store is not None:
            self._store.close()
        if self._rt is not None:
            self._rt.timers.close()
        self._preemptor.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._state = "closed"

    @property
    def state(self) -> str:
        """ "created", "running", "closing" or "closed"."""
        return self._state

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._runtime().loop

    def _runtime(self) -> Runtime:
        if self._rt is None:
            raise KernelClosedError("kernel is not started (use 'async with Kernel()')")
        return self._rt

    @property
    def vms(self) -> Mapping[int, Vm]:
        """The live VMs by id (a read-only view)."""
        return types.MappingProxyType(self._vms)

    # ---- observation ----
    def stats(self) -> dict[str, Any]:
        """A snapshot of the kernel's counters as plain data (safe to JSON-encode); the
        switch's per-port counters are left out (``vm_stats`` has each VM's NIC)."""
        states: dict[str, int] = {}
        for vm in self._vms.values():
            states[vm.state.value] = states.get(vm.state.value, 0) + 1
        swap: dict[str, Any] = {
            "swap_outs": 0,
            "swap_ins": 0,
            "pages_out": 0,
            "pages_in": 0,
            "bytes_out": 0,
            "bytes_in": 0,
            "used": 0,
            "budget": None,
        }
        if self._gate is not None and self._store is not None:
            swap.update(self._store.stats)
            swap.update(self._gate.stats, used=self._gate.used, budget=self._gate.budget)
        rt = self._rt
        return {
            "state": self._state,
            "vms": len(self._vms),
            "vm_states": states,
            "cpu_switches": rt.arbiter.switches if rt else 0,
            "slices_started": sum(lane.starts for lane in self._lanes),
            "preempt_stops": sum(lane.stops for lane in self._lanes),
            "timers": {"armed": len(rt.timers), "fired": rt.timers.fired, "early": rt.timers.early}
            if rt
            else {},
            "switch": {
                k: v for k, v in self.switch.stats(per_port=False).as_dict().items() if k != "port_stats"
            },
            "swap": swap,
        }

    def vm_stats(self, vm: Vm) -> dict[str, Any]:
        """One VM's counters as plain data."""
        return {
            "id": vm.id,
            "image": vm.image.name,
            "state": vm.state.value,
            "pending": vm.pending,
            "swapped": vm.swapped,
            "hypercalls": vm.hypercalls,
            **vm.stats,
            "console_bytes": vm.console.written,
            "nic": vm.nic.stats.as_dict() if vm.nic is not None else None,
        }

    # ---- time ----
    def now_ns(self) -> int:
        """The kernel's monotonic clock: ns since the kernel started."""
        return self._runtime().now_ns()

    # ---- VMs ----
    async def spawn(
        self,
        image: str | os.PathLike[str] | Image,
        *,
        memory: str | int = abi.DEFAULT_MEMORY,
        cmdline: str = "",
        console: ConsoleSink | None = None,
        nic: bool = True,
        nic_config: NicConfig | None = None,
        mac: bytes | str | None = None,
        disks: Sequence[DiskSpec] = (),
        link: LinkSpec | None = None,
    ) -> Vm:
        """Create and start a VM running ``image`` (a built-in name, a path, or an Image).

        ``memory`` is the guest address-space size ("16M", bytes). ``console``, when
        given, receives every chunk the guest writes (otherwise read ``vm.console``).
        ``nic``: give the VM a NIC on the kernel's LAN (``kernel.switch``), MAC
        ``02:<kernel mac_tag>:`` + the VM id unless ``mac`` gives one; ``nic_config`` sets
        its queue bounds; ``link`` impairs its cable (``denali.net.impair.LinkSpec``).
        ``disks``: the VM's virtual disks (``DiskSpec``; ``DiskError``
        when one cannot be opened). Raises ``ImageError``/``ConfigError`` for bad input,
        ``ResourceError`` when the host cannot hold another VM, ``KernelClosedError``
        after close.
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
        if self._gate is None and len(self._vms) >= self.max_engines:
            raise ResourceError(
                f"{len(self._vms)} VMs are resident, the most this process can hold "
                f"({self.max_engines}, from vm.max_map_count); raise vm.max_map_count "
                "or set a memory budget so idle VMs swap out"
            )
        if len(self._vms) >= self.config.max_vms:
            raise ConfigError(f"the kernel already runs max_vms={self.config.max_vms} VMs")
        await self.switch.start()
        vm_id = next(self._ids)
        spec = VmSpec(
            img,
            size,
            cmdline,
            console,
            nic,
            as_mac(mac) if mac is not None else None,
            nic_config,
            tuple(disks),
            link,
        )
        default_mac = mac_for_vm(vm_id, self.mac_tag)
        vm = await build_vm(self._runtime(), self.switch, vm_id, spec, default_mac, self._vm_ended)
        vm.start()
        if self._state != "running":  # closed while the disks opened: end it at once
            vm.kill()
            raise KernelClosedError("kernel is closed")
        self._vms[vm_id] = vm
        return vm

    def _vm_ended(self, vm: Vm) -> None:
        """Called by a VM as it ends: unpublish it and let its NIC's last frames go out."""
        self._vms.pop(vm.id, None)
        nic = vm.nic
        if nic is not None and nic.switch is not None:
            if nic.ingress_pending and self._state == "running":
                # frames the guest sent before it ended still go out
                self._owner.spawn(self._detach_later(nic), name=f"denali-detach-{vm.id}")
            else:
                self.switch.detach(nic)

    async def _detach_later(self, nic: NicPort) -> None:
        try:
            await self.switch.join()
        finally:
            if nic.switch is not None:
                self.switch.detach(nic)
