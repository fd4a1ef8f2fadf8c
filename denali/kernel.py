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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Unpack

import aiofiles

from denali import abi
from denali.arbiter import CpuArbiter
from denali.builder import VmSpec, build_vm
from denali.config import KernelConfig, KernelOptions, check_memory, parse_size
from denali.cpu import CpuState
from denali.devices.base import Device
from denali.devices.children import Children
from denali.devices.clock import Clock
from denali.devices.console import Console, ConsoleSink
from denali.devices.disk.device import Disks
from denali.devices.disk.spec import DiskSpec
from denali.devices.nic import Nic, NicConfig, NicPort
from denali.devices.personality import Personality
from denali.errors import (
    ConfigError,
    DenaliError,
    ImageError,
    KernelClosedError,
    MigrationError,
    ResourceError,
    SnapshotFormatError,
    VmStateError,
)
from denali.hypercalls import HypercallTable
from denali.images import resolve
from denali.loader import Image, parse_image
from denali.memory import GuestMemory
from denali.monitor.base import Monitor
from denali.monitor.stack import MonitorStack
from denali.nesting import ChildSpawner
from denali.net.ethernet import as_mac, mac_for_vm
from denali.net.impair import LinkSpec
from denali.net.switch import Switch, SwitchConfig
from denali.preempt import Lane, Preemptor
from denali.runtime import Runtime
from denali.scheduler import Scheduler
from denali.sleep import NativeSleep
from denali.snapshot import Progress as SnapshotProgress
from denali.snapshot import SnapshotFile, SnapshotInfo, open_snapshot, write_snapshot
from denali.swap import Gatekeeper, SwapStore
from denali.tasks import TaskOwner
from denali.timers import Timers
from denali.vm import Vm, VmState

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


DEVICE_CLASSES: tuple[type[Any], ...] = (Vm, Clock, Console, Nic, Disks, Children, Personality)
_SAVED_DEVICES: dict[str, type[Device]] = {
    c.__name__.lower(): c for c in DEVICE_CLASSES if isinstance(c, type) and issubclass(c, Device)
}
"""The devices of a saved VM by the name its state is kept under (``Vm.saved_meta``)."""
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
        self._monitor_totals: dict[str, int] = {}
        """Counters of every VM's monitors, kept after the VMs end (``stats()["monitors"]``)."""
        self._ids = itertools.count(config.id_start, config.id_step)
        self._state = "created"
        self._watchers: list[Callable[[Vm], None]] = []
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
        self._children = ChildSpawner(
            self._runtime,
            self._new_id,
            self._publish_child,
            self._vm_ended,
            self._room_for_child,
            self._monitor_totals,
            self.switch,
            lambda vm_id: mac_for_vm(vm_id, self.mac_tag),
        )
        """Makes the child VMs of every VM's child device (denali.nesting)."""
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
            native=self.config.native,
        )
        self._rt.timers.burst_ns = self._rt.slice_ns  # due timers may run VMs' slices inline
        if self._rt.native and self._pool is None:  # and so may the arbiter, VMs' turns
            self._rt.arbiter.inline = self._inline_turn
            # and idle VMs' wake-ups run in C
            self._rt.sleep = NativeSleep(self._rt.timers, self._rt.arbiter, epoch, self._rt.slice_ns)
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
            if self._rt.sleep is not None:
                self._rt.sleep.close()
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
    def stats(self, *, vm_states: bool = True) -> dict[str, Any]:
        """A snapshot of the kernel's counters as plain data (safe to JSON-encode); the
        switch's per-port counters are left out (``vm_stats`` has each VM's NIC).
        ``vm_states=False``: no count of VMs by state (it visits every VM; observers of
        large kernels count them in steps, see ``denali.metrics``)."""
        states: dict[str, int] = {}
        for vm in self._vms.values() if vm_states else ():
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
            "monitors": dict(self._monitor_totals),
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
            "hypercalls_native": vm.native_hypercalls,
            **vm.stats,
            "console_bytes": vm.console.written,
            "nic": vm.nic.stats.as_dict() if vm.nic is not None else None,
            "monitors": vm._interposer.stats() if isinstance(vm._interposer, MonitorStack) else None,
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
        monitors: Sequence[Monitor] = (),
        child_memory: str | int = 0,
    ) -> Vm:
        """Create and start a VM running ``image`` (a built-in name, a path, or an Image).

        ``memory`` is the guest address-space size ("16M", bytes). ``console``, when
        given, receives every chunk the guest writes (otherwise read ``vm.console``).
        ``nic``: give the VM a NIC on the kernel's LAN (``kernel.switch``), MAC
        ``02:<kernel mac_tag>:`` + the VM id unless ``mac`` gives one; ``nic_config`` sets
        its queue bounds; ``link`` impairs its cable (``denali.net.impair.LinkSpec``).
        ``disks``: the VM's virtual disks (``DiskSpec``; ``DiskError``
        when one cannot be opened). ``monitors``: stacked on the VM before its first
        instruction, nearest the VM first (``denali.monitor``; ``monitors_of(vm)`` pushes
        and pops later). ``child_memory``: the memory the VM's child VMs and all their
        descendants may hold together ("64M"; 0: it may create none; docs/virtual-architecture.md,
        "Child VMs"). Raises ``ImageError``/``ConfigError`` for bad input,
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
        grant = parse_size(child_memory) if child_memory else 0
        if grant < 0 or grant > 1 << 40:
            raise ConfigError(f"child_memory {child_memory!r} is out of range")
        await self.switch.start()
        vm_id = self._new_id()
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
            child_memory=grant,
        )
        default_mac = mac_for_vm(vm_id, self.mac_tag)
        vm = await build_vm(
            self._runtime(), self.switch, vm_id, spec, default_mac, self._vm_ended, self._children
        )
        self._stack_monitors(vm, monitors, None)
        vm.start()
        if self._state != "running":  # closed while the disks opened: end it at once
            vm.kill()
            raise KernelClosedError("kernel is closed")
        self._publish(vm)
        return vm

    def _stack_monitors(self, vm: Vm, monitors: Sequence[Monitor], saved: Sequence[Any] | None) -> None:
        """Push ``monitors`` on built, unstarted ``vm`` (nearest the VM first) and give them
        ``saved`` state (a snapshot's); on failure the VM is ended and the error raised."""
        if not monitors:
            return
        try:
            stack = self.monitors_of(vm)
            for m in reversed(monitors):
                stack.push(m)
            if saved:
                stack.restore(saved)
        except BaseException:
            vm.start()  # ended at once: its devices close through the usual path
            vm.kill()
            raise

    def monitors_of(self, vm: Vm) -> MonitorStack:
        """The monitor stack of ``vm`` (made empty if it has none): push and pop on it."""
        return MonitorStack.of(vm, self._monitor_totals)

    def _inline_turn(self, vm_id: int, lane: Lane, fut: asyncio.Future[Lane | None]) -> bool:
        vm = self._vms.get(vm_id)
        return vm is not None and vm.inline_turn(lane, fut)

    def _publish_child(self, vm: Vm) -> None:
        self._publish(vm)

    def _publish(self, vm: Vm) -> None:
        """Make ``vm`` one of the live VMs and tell the watchers (``watch``)."""
        self._vms[vm.id] = vm
        for fn in list(self._watchers):
            try:
                fn(vm)
            except Exception as exc:  # a watcher's bug never stops a VM
                log.error("VM watcher %r failed: %r", fn, exc, exc_info=exc)

    def watch(self, fn: Callable[[Vm], None]) -> None:
        """Call ``fn(vm)`` for every VM this kernel publishes from now on (spawned,
        restored, cloned, migrated in, a child VM), on the event loop, after the VM was
        started and before its first slice: the place to give it a console sink
        (``vm.console.sink``) or to wait for its end. ``fn`` must not block."""
        self._watchers.append(fn)

    def _room_for_child(self) -> bool:
        if self._state != "running" or len(self._vms) >= self.config.max_vms:
            return False
        return self._gate is not None or len(self._vms) < self.max_engines

    def _new_id(self) -> int:
        """The next VM id no live VM has (restored VMs keep theirs)."""
        vm_id = next(self._ids)
        while vm_id in self._vms:
            vm_id = next(self._ids)
        return vm_id

    # ---- snapshots, restores and clones (docs/api-http.md, denali/snapshot.py) ----
    async def snapshot(
        self, vm: Vm, path: str | os.PathLike[str], *, progress: SnapshotProgress | None = None
    ) -> SnapshotInfo:
        """Write paused ``vm``'s complete state to ``path`` (``denali.snapshot``); the VM
        stays paused. ``progress(done, total)`` (bytes of memory, from a worker thread).
        Raises ``VmStateError`` (not paused, resumed meanwhile, a throwaway disk overlay
        holding writes, not a VM of this kernel; ``SubtreeError``, one of them: the VM has
        live child VMs or is one, which a snapshot does not carry) and ``SnapshotWriteError`` (the host
        cannot write the file; nothing is left at ``path``)."""
        if self._vms.get(vm.id) is not vm:
            raise VmStateError(f"VM {vm.id} is not a live VM of this kernel")
        vm.check_no_subtree("a snapshot")
        for disk, spec in zip(
            vm.disks.disks if vm.disks else (), vm.disks.specs if vm.disks else (), strict=True
        ):
            overlay = getattr(disk.backend, "overlay", None)
            if spec.mode == "overlay-discard" and overlay is not None and overlay.blocks_held():
                raise VmStateError(
                    f"VM {vm.id}: disk {disk.name} has writes in a throwaway overlay, "
                    "which a snapshot does not keep (give the disk :keep)"
                )
        image = await _image_bytes(vm)
        state = await vm.snapshot_state()
        if isinstance(vm._interposer, MonitorStack):  # monitors with state keep it
            state.meta["monitors"] = vm._interposer.save()
        slices = vm.stats["slices"]
        try:
            info = await write_snapshot(
                os.fspath(path),
                state.meta,
                state.cpu.pack(),
                image,
                state.memory,
                state.runs,
                vm.mem_size,
                progress,
            )
        finally:
            if state.scratch is not None:
                state.scratch.close()
        if vm.state is not VmState.PAUSED or vm.stats["slices"] != slices:
            os.unlink(info.path)
            raise VmStateError(f"VM {vm.id} ran while its snapshot was written; no snapshot kept")
        log.info("VM %d: snapshot %s (%d pages)", vm.id, info.path, info.stored_pages)
        return info

    async def restore(
        self,
        path: str | os.PathLike[str],
        *,
        console: ConsoleSink | None = None,
        progress: SnapshotProgress | None = None,
        monitors: Sequence[Monitor] = (),
    ) -> Vm:
        """Start the VM saved in the snapshot at ``path``, as it was: same VM id, MAC, command
        line and disks, its clock continuing from the snapshot. ``monitors``: stacked as in
        ``spawn``; when the snapshot was taken under monitors, these must be of the same
        classes in the same order (``ConfigError`` otherwise) and get their saved state
        back; without ``monitors`` the VM runs unmonitored (a warning says so). Raises
        ``SnapshotFormatError`` (not a usable snapshot), ``ConfigError`` (its id or MAC is
        in use here: the original still runs; clone it instead), ``DiskError``, and what
        ``spawn`` raises."""
        snap = await open_snapshot(os.fspath(path), progress)
        try:
            vm_id = int(snap.meta["vm"]["id"])
            if vm_id in self._vms:
                raise ConfigError(
                    f"{snap.path}: VM id {vm_id} is in use in this kernel (the original "
                    "still runs?); clone the snapshot for a VM with a new identity"
                )
            return await self._spawn_from(
                self._prepare(snap), vm_id, None, None, console, clone=False, monitors=monitors
            )
        finally:
            snap.close()

    async def clone(
        self,
        path: str | os.PathLike[str],
        count: int = 1,
        *,
        cmdlines: Sequence[str] | None = None,
        console: ConsoleSink | None = None,
        monitors: Callable[[], Sequence[Monitor]] | None = None,
    ) -> list[Vm]:
        """Start ``count`` clones of the snapshot at ``path``, sharing its memory copy-on-write.
        Each gets its own VM id and MAC (the kernel's default for that id), ``cmdlines[i]``
        as its command line (default: the snapshot's), ``generation`` + 1 and ``Irq.CLONE``
        pending, so the guest re-reads its identity. Read-only and throwaway disks are
        opened anew for each; kept overlays and read-write images cannot be shared
        (``ConfigError``). ``monitors``: called once per clone for its own monitors, which
        get the snapshot's monitor state as in ``restore``. Raises like ``restore``."""
        if count < 1 or (cmdlines is not None and len(cmdlines) != count):
            raise ConfigError(
                f"clone: count {count} with {0 if cmdlines is None else len(cmdlines)} command lines"
            )
        snap = await open_snapshot(os.fspath(path))
        vms: list[Vm] = []
        try:
            for spec in snap.meta["devices"].get("disks", {}).get("specs", []):
                if spec.get("mode") in ("overlay-keep", "rw"):
                    raise ConfigError(
                        f"{snap.path}: disk {spec.get('path')} ({spec.get('mode')}) "
                        "cannot be shared by clones"
                    )
            prepared = self._prepare(snap)
            for i in range(count):
                cmd = cmdlines[i] if cmdlines is not None else None
                own = monitors() if monitors is not None else ()
                vms.append(
                    await self._spawn_from(
                        prepared, self._new_id(), cmd, b"", console, clone=True, monitors=own
                    )
                )
        except BaseException:
            for vm in vms:
                vm.kill()
            raise
        finally:
            snap.close()
        return vms

    def _prepare(self, snap: SnapshotFile) -> _Restorable:
        """What every VM restored from ``snap`` is built from (parsed once per snapshot)."""
        r = restorable(snap.meta, snap.cpu, snap.image, snap.path, SnapshotFormatError, snap)
        if r.memory != snap.mem_size:
            raise SnapshotFormatError(f"{snap.path}: memory size differs from the header", snap.path)
        return r

    async def adopt(
        self,
        meta: dict[str, Any],
        cpu: bytes,
        image: bytes | Image,
        memory: GuestMemory,
        *,
        console: ConsoleSink | None = None,
        where: str = "migration",
        paused: bool = False,
        image_data: bytes | None = None,
        monitors: Sequence[Monitor] = (),
    ) -> Vm:
        """Start a VM that migrated in (``denali.migration``): ``meta`` and ``cpu`` as in a
        snapshot, its ELF ``image`` (or that parsed), and ``memory`` holding its pages (the
        VM owns it from here, also when this raises). Same VM id and MAC as it had; its clock continues.
        ``paused``: it is held PAUSED before its first slice until ``resume()``.
        ``image_data``: the ELF file when ``image`` is given parsed (kept for its next
        snapshot or migration). ``monitors``: stacked and given ``meta["monitors"]`` as
        in ``restore``.
        ``MigrationError`` for state that does not parse or an id or MAC in use here, and
        what ``spawn`` raises."""
        try:
            r = restorable(meta, cpu, image, where, MigrationError)
            if r.memory != memory.size:
                raise MigrationError(f"{where}: memory size differs from the VM's")
            vm_id = int(meta["vm"]["id"])
            self.check_free(vm_id, r.mac, where)
            vm = await self._spawn_from(
                r, vm_id, None, None, console, clone=False, memory=memory, paused=paused, monitors=monitors
            )
            vm.image_data = image if isinstance(image, bytes) else image_data
            return vm
        except BaseException:
            memory.close()
            raise

    def check_free(self, vm_id: int, mac: bytes, where: str) -> None:
        """``MigrationError`` unless VM id ``vm_id`` and ``mac`` are free in this kernel."""
        if vm_id in self._vms:
            raise MigrationError(f"{where}: VM id {vm_id} is in use in this kernel")
        port = self.switch.lookup(mac)
        if port is not None and port.mac == mac:
            raise MigrationError(f"{where}: MAC {mac.hex(':')} is in use in this kernel")
        if len(self._vms) >= self.config.max_vms:
            raise MigrationError(f"{where}: the kernel already runs max_vms={self.config.max_vms} VMs")

    async def _spawn_from(
        self,
        r: _Restorable,
        vm_id: int,
        cmdline: str | None,
        mac: bytes | None,
        console: ConsoleSink | None,
        clone: bool,
        memory: GuestMemory | None = None,
        paused: bool = False,
        monitors: Sequence[Monitor] = (),
    ) -> Vm:
        """Build, restore, publish and start one VM from ``r`` (``mac`` b"": the kernel's
        default for ``vm_id``; None: the snapshot's)."""
        if self._state != "running":
            if self._state == "created":
                self.start()
            else:
                raise KernelClosedError("kernel is closed")
        cmd = r.cmdline if cmdline is None else cmdline
        own_mac = r.mac if mac is None else None
        if len(cmd.encode()) > abi.CMDLINE_MAX or "\0" in cmd:
            raise ConfigError(f"command line is longer than {abi.CMDLINE_MAX} bytes or has a NUL")
        if self._gate is None and len(self._vms) >= self.max_engines:
            raise ResourceError(
                f"{len(self._vms)} VMs are resident, the most this process can hold ({self.max_engines})"
            )
        if len(self._vms) >= self.config.max_vms:
            raise ConfigError(f"the kernel already runs max_vms={self.config.max_vms} VMs")
        await self.switch.start()
        spec = VmSpec(
            r.image, r.memory, cmd, console, r.nic, own_mac, None, r.disks, child_memory=r.child_memory
        )
        default_mac = mac_for_vm(vm_id, self.mac_tag)
        vm = await build_vm(
            self._runtime(), self.switch, vm_id, spec, default_mac, self._vm_ended, self._children
        )
        try:
            vm.restore_state(r.meta, r.cpu, r.snap, clone, memory)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            vm.start()  # and ended at once: unpublished, its port detached
            vm.kill()
            raise ConfigError(f"VM {vm_id}: its saved state does not restore ({exc!r})") from None
        saved = r.meta.get("monitors") or []
        if saved and not monitors:
            log.warning(
                "VM %d: restored without the monitors its snapshot was taken under (%s)",
                vm_id,
                ", ".join(str(m.get("monitor")) for m in saved if isinstance(m, dict)),
            )
        self._stack_monitors(vm, monitors, saved if isinstance(saved, list) else None)
        if paused:
            vm.hold_paused()
        vm.start()
        if self._state != "running":
            vm.kill()
            raise KernelClosedError("kernel is closed")
        self._publish(vm)
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


@dataclass(frozen=True, slots=True)
class _Restorable:
    """A snapshot's VM, parsed once: what ``Kernel._spawn_from`` builds VMs from."""

    snap: SnapshotFile | None
    meta: dict[str, Any]
    image: Image
    memory: int
    cpu: CpuState
    nic: bool
    disks: tuple[DiskSpec, ...]
    cmdline: str
    mac: bytes
    child_memory: int = 0
    """The VM's child-memory grant (its children themselves are not carried)."""


def restorable(
    meta: dict[str, Any],
    cpu_bytes: bytes,
    image: bytes | Image,
    where: str,
    error: type[SnapshotFormatError] | type[DenaliError],
    snap: SnapshotFile | None = None,
) -> _Restorable:
    """Parse a saved VM (a snapshot's or a migration's sections); ``error`` naming
    ``where`` when any of it is not valid."""
    try:
        saved = meta["vm"]
        img = image if isinstance(image, Image) else parse_image(image, f"{where}:image", str(saved["image"]))
        size = check_memory(int(saved["mem_size"]))
        cpu = CpuState.unpack(cpu_bytes)
        devices = meta["devices"]
        nic = "nic" in devices
        disks = tuple(DiskSpec(**d) for d in devices.get("disks", {}).get("specs", []))
        cmdline = str(saved["cmdline"])
        mac = bytes(saved["mac"])
        for key in ("id", "clock_ns", "pending", "irq_entry", "hypercalls", "generation"):
            if not isinstance(saved[key], int):
                raise TypeError(f"{key} is not an integer")
        if not isinstance(saved["stats"], dict) or not isinstance(devices, dict):
            raise TypeError("stats or devices is not an object")
        if len(mac) != 6:
            raise ValueError("a MAC has 6 bytes")
        for name, device in _SAVED_DEVICES.items():  # each device checks its own state
            if name in devices:
                device.check_state(devices[name])
        grant = devices.get("children", {}).get("quota", 0)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = "snapshot meta section" if snap is not None else "saved VM state"
        if error is SnapshotFormatError:
            raise SnapshotFormatError(f"{where}: {what} is not valid ({exc!r})", where) from None
        raise error(f"{where}: {what} is not valid ({exc!r})") from None
    return _Restorable(snap, meta, img, size, cpu, nic, disks, cmdline, mac, grant)


async def _image_bytes(vm: Vm) -> bytes:
    """The ELF file ``vm`` was booted from, for its snapshot; ``VmStateError`` when it is
    gone or changed since the VM booted, or when it was composed in memory (a Linux program
    beside its personality: its page map and system-call route are not carried either)."""
    if vm.image.regions:
        raise VmStateError(
            f"VM {vm.id} runs a Linux program beside its personality: snapshots, clones and "
            "migrations do not carry such VMs yet"
        )
    if vm.origin is not None:  # restored or cloned: the image came with its snapshot
        return vm.origin.image
    if vm.image_data is not None:  # migrated in: the image came with it
        return vm.image_data
    path = vm.image.path
    try:
        async with aiofiles.open(path, "rb") as f:
            data = await f.read()
        same = parse_image(data, path, vm.image.name) == vm.image
    except (OSError, ImageError) as exc:
        raise VmStateError(f"VM {vm.id}: its image {path} cannot be read for the snapshot: {exc}") from None
    if not same:
        raise VmStateError(f"VM {vm.id}: its image {path} changed since it booted")
    return data
