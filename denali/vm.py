"""A virtual machine: its state machine, the coroutine that runs its slices, its interrupts.

State machine (``Vm.state``)::

    CREATED -> RUNNABLE <-> RUNNING -> (EXITED | FAULTED | FAILED)
                 ^  ^          |
                 |  +-- IDLE <-+          any state but the final ones -> KILLED
                 |       ^ |
                 |       | v
                 +---- PAUSED             (pause() at a slice boundary; resume())

RUNNABLE: waiting for the CPU. RUNNING: inside a slice. IDLE: in idle-with-timeout
(a timer and a future; no CPU at all). EXITED: the guest called terminate. FAULTED: the
guest faulted (``Vm.fault`` has the report). FAILED: a kernel bug, or its swap file
going bad, hit this VM only. KILLED: the host stopped it (``kill()`` or kernel close).
PAUSED: the host paused it (``pause()``): it stopped at a slice boundary (before its next
slice, or while it waits in IDLE) and runs no guest code until ``resume()``. A VM paused
in IDLE keeps its deadline: the timer runs on, and interrupts still queue; what woke it
is delivered after ``resume()``. A paused VM is never swapped out. Snapshots are taken
of paused VMs (``snapshot_state``); a VM restored from one (``restore_state``) continues
where it stopped: before its next slice, or in its IDLE with the same deadline on its
own clock (``_clock_offset`` makes a restored VM's clock continue from the snapshot).

A VM is made whole by ``denali.builder`` (devices, port, swap area) and only then
published. Its memory and CPU (its *resident* state) are made when the gatekeeper first
admits it, dropped when it is swapped out, and made again from the swap file when it
is woken: ``(new) -admit-> resident -evict-> swapped -admit-> resident``.

The VM is slot 0 of its own device table: it answers TERMINATE, IDLE, SET_HANDLER and
SYSCALL_ENTRY (both say where its CPU enters the guest: on interrupts, and on a foreign
program's system calls, which its CPU routes, ``denali.cpu``).
To its devices it is a ``DeviceHost`` (``raise_irq``, ``post``, ``now_ns``, ``call_at``).

Batched virtual interrupts: devices and timers OR bits into the pending mask from the
event loop; nothing runs until the VM's next slice, where the whole set is delivered at
once: either as the return value of the IDLE hypercall, or, when the guest registered
an entry point and its ``irq_enable`` register is 1, through that entry. Posted device
completions are applied before that, so a guest never sees an interrupt before the
memory it announces.

Virtual registers: every kernel field of the page is rewritten before every slice (what
a guest stores there is overwritten); only ``irq_enable`` is the guest's.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import mmap
import re
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Final

from denali import _uc, abi
from denali.abi import Hc, Irq, Result
from denali.cpu import EXIT, CpuState, Exit, SyscallRoute, VCpu, layout_regions
from denali.devices.base import SLOT_VM, Completion, Device
from denali.devices.clock import Clock
from denali.devices.console import Console
from denali.errors import (
    DiskError,
    GuestFault,
    KernelInternalError,
    SubtreeError,
    SwapError,
    VmKilledError,
    VmMigratedError,
    VmStateError,
)
from denali.fault import FaultReport
from denali.interpose import Interposer, Outcome
from denali.memory import PROT_R, PROT_RW, PROT_RX, PROT_X, GuestMemory, Region
from denali.swap import ENGINE_COST, SwapImage, resident_pages, touched_bytes
from denali.timers import Timer

_IRQ_ALL: Final = abi.IRQ_ALL

if TYPE_CHECKING:
    from denali.devices.children import Children
    from denali.devices.disk.device import Disks
    from denali.devices.nic import Nic, NicPort
    from denali.devices.personality import Personality
    from denali.loader import Image
    from denali.preempt import Lane
    from denali.runtime import Runtime
    from denali.snapshot import SnapshotFile

log = logging.getLogger(__name__)

_V: Final = abi.VREGS.offsets()
_VREGS: Final = int(abi.Layout.VREGS)
_OFF_TIME: Final = _VREGS + _V["time_ns"]
_OFF_IE: Final = _VREGS + _V["irq_enable"]
_OFF_PENDING: Final = _VREGS + _V["pending"]
_HEAD: Final = (_VREGS, _VREGS + _V["time_ns"])
"""The kernel fields before time_ns (magic, abi_version, vm_id, mem_size)."""
_TAIL: Final = (_VREGS + _V["heap_start"], _VREGS + abi.VREGS.size)
"""The kernel fields after irq_enable (heap_start .. the end of the block)."""
_TIME_KHZ_PENDING: Final = struct.Struct("<QII")
assert _V["cpu_khz"] == _V["time_ns"] + 8 and _V["pending"] == _V["cpu_khz"] + 4
assert _V["irq_enable"] == _V["pending"] + 4 and _V["heap_start"] == _V["irq_enable"] + 4
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_IDLE: Final = abi.HYPERCALL_BY_NR[Hc.IDLE].args.offsets()
_TERM_STATUS: Final = abi.HYPERCALL_BY_NR[Hc.TERMINATE].args.offsets()["status"]
_HANDLER_ENTRY: Final = abi.HYPERCALL_BY_NR[Hc.SET_HANDLER].args.offsets()["entry"]
_SYSENT: Final = abi.HYPERCALL_BY_NR[Hc.SYSCALL_ENTRY].args.offsets()["entry"]
_U32X4: Final = struct.Struct("<IIII")


INTERPOSABLE: Final = frozenset(("hypercall", "interrupt", "fault", "frame_out", "frame_in", "disk"))
"""The kinds of VM event a monitor may interpose on (see ``Vm.interposed``)."""


class VmState(Enum):
    """Where a VM is in its life; see the module docstring."""

    CREATED = "created"
    RUNNABLE = "runnable"
    RUNNING = "running"
    IDLE = "idle"
    PAUSED = "paused"
    EXITED = "exited"
    FAULTED = "faulted"
    FAILED = "failed"
    KILLED = "killed"
    MIGRATED = "migrated"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL: Final = (VmState.EXITED, VmState.FAULTED, VmState.FAILED, VmState.KILLED, VmState.MIGRATED)
"""The final states (a tuple: membership by identity, no Python-level hash)."""


class Vm:
    """One VM. Made by ``Kernel.spawn``; never construct directly."""

    SLOT: ClassVar[int] = SLOT_VM
    HYPERCALLS: ClassVar = {
        Hc.TERMINATE: "hc_terminate",
        Hc.IDLE: "hc_idle",
        Hc.SET_HANDLER: "hc_set_handler",
        Hc.SYSCALL_ENTRY: "hc_syscall_entry",
    }

    __slots__ = (
        "__weakref__",
        "_asleep",
        "_clock_offset",
        "_clock_zero",
        "_cpu",
        "_cpu_state",
        "_devices",
        "_dispatch",
        "_done",
        "_evicting",
        "_exit_request",
        "_fast_exit",
        "_final_request",
        "_hypercalls",
        "_idle_arg",
        "_idle_deadline",
        "_idle_recorded",
        "_idle_timer",
        "_idle_waiters",
        "_in_slice",
        "_incoming",
        "_interposer",
        "_irq_entry",
        "_memory",
        "_migrating",
        "_migration_busy",
        "_native",
        "_on_end",
        "_on_wake",
        "_origin",
        "_page_map",
        "_pause",
        "_pending",
        "_posted",
        "_route",
        "_rt",
        "_sleeper",
        "_stats",
        "_swapped",
        "_swapping_in",
        "_syscalls",
        "_task",
        "_turn_rest",
        "_vregs_head",
        "_vregs_tail",
        "_waker",
        "children",
        "clock",
        "close_errors",
        "cmdline",
        "console",
        "created_ns",
        "disks",
        "ended_ns",
        "error",
        "exit_status",
        "fault",
        "first_slice_ns",
        "generation",
        "group",
        "id",
        "image",
        "image_data",
        "interposed",
        "mem_size",
        "nic_device",
        "state",
        "stopped_by",
    )

    def __init__(
        self,
        rt: Runtime,
        vm_id: int,
        image: Image,
        mem_size: int,
        cmdline: str,
        console: Console,
        clock: Clock,
        nic: Nic | None,
        disks: Disks | None,
        personality: Personality,
        on_end: Callable[[Vm], None],
        children: Children | None = None,
        group: int | None = None,
    ) -> None:
        """``on_end(vm)`` is called as the VM ends (the kernel unpublishes it).
        ``children``: its child-VM device; ``group``: its CPU group (its root
        ancestor's id: a subtree shares one CPU share; default its own id)."""
        self._rt = rt
        self._on_end = on_end
        self.id = vm_id
        self.image = image
        self.cmdline = cmdline
        self.mem_size = mem_size
        self.state = VmState.CREATED
        self.console = console
        """The console device: ``read()``, ``async for``, ``text()`` (see its module)."""
        self.clock = clock
        self.nic_device = nic
        self.disks = disks
        self.children = children
        self.group = vm_id if group is None else group
        self._devices: list[object | None] = [self, clock, console, nic, disks, children, personality]
        self.interposed: frozenset[str] = frozenset()
        """The event kinds (``INTERPOSABLE``) some monitor interposes on. Empty: every
        event takes the kernel's direct path, at its direct cost (and the native fast
        path, where there is one); a kind in the set takes the path that calls the
        monitors. Changed only by the monitor layer."""
        self._interposer: Interposer | None = None
        """The monitor stack's side of the seam (``denali.interpose``); None: no monitor."""
        self.stopped_by: str | None = None
        """Who stopped the VM when a monitor did (``wait()`` says so)."""
        self._pending = 0
        self._irq_entry = 0
        self._route: SyscallRoute | None = None
        """SYSCALL_ENTRY's routing (kept across swap; each new CPU gets it)."""
        self._syscalls = 0
        self._exit_request: int | None = None
        self.exit_status: int | None = None
        self.fault: FaultReport | None = None
        self.error: BaseException | None = None
        self.close_errors: list[DiskError] = []
        """Disk errors met while closing the VM's disks (``wait()`` raises them)."""
        self._stats = {
            "slices": 0,
            "cpu_ns": 0,
            "preemptions": 0,
            "idles": 0,
            "fast_wakes": 0,
            "inline_turns": 0,
            "irqs_raised": 0,
            "irq_batches": 0,
            "irq_bits_delivered": 0,
        }
        """Counters (``stats``)."""
        self._asleep = False
        """The VM's IDLE wait is C's (``denali.sleep``): ``_leave_c`` before touching it."""
        self._sleeper: tuple[VCpu, _uc.SleeperCell] | None = None
        """The sleeper cell of the resident CPU (made at its first sleep in C)."""
        self.created_ns = rt.now_ns()
        self.first_slice_ns: int | None = None
        self.ended_ns: int | None = None
        self._clock_offset = 0
        """VM clock - kernel clock (0 unless restored from a snapshot)."""
        self._clock_zero = rt.epoch_ns
        """``time.monotonic_ns()`` when the VM's clock read 0 (epoch - offset)."""
        self._waker: asyncio.Future[None] | None = None
        self._idle_timer: Timer | None = None
        """The deadline of the IDLE the VM waits in (None: none)."""
        self._fast_exit: Exit | None = None
        """Set by ``_fast_wake`` or an inline turn when it ran a slice whose exit the
        coroutine must handle."""
        self._turn_rest = 0
        """What is left of a slice an inline turn began and the inline time cut (ns): the
        VM's own next slice runs only that long (0: a whole slice)."""
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] = rt.loop.create_future()
        self._posted: deque[Completion] = deque()
        self._in_slice = False
        self._hypercalls = 0
        self._native = 0
        # Resident state, made at admission (see the module docstring).
        self._memory: GuestMemory | None = None
        self._cpu: VCpu | None = None
        self._dispatch: Callable[[int, int], int] | None = None
        self._cpu_state = CpuState.boot(image.entry, mem_size)
        self._page_map: tuple[Region, ...] | None = None
        """The page map while swapped out (MEM_PROTECT may have changed the image's)."""
        self._swapped: SwapImage | None = None
        self._evicting: asyncio.Future[None] | None = None
        self._swapping_in = False
        self._vregs_head = b""
        self._vregs_tail = b""
        # Pause, snapshot and restore (see the section below).
        self._pause: _Pause | None = None
        self._idle_arg: int | None = None
        """While in IDLE (or restored into it): the guest address of its argument struct."""
        self._idle_deadline = 0
        """That IDLE's deadline (kept so a restored VM can wait without its memory)."""
        self._on_wake = 0
        """Interrupt bits raised once the VM is next resident (a clone's Irq.CLONE)."""
        self._origin: SnapshotFile | None = None
        """The snapshot a restored VM's memory maps copy-on-write (None: booted)."""
        self.generation = 0
        """How many times this VM's lineage was cloned (the ``generation`` register)."""
        # Live migration (denali.migration).
        self._migrating = False
        """True while the VM is being migrated out: it is not swapped out meanwhile."""
        self._migration_busy = False
        """True while ``denali.migration.migrate`` works on this VM (one at a time)."""
        self._idle_recorded = False
        """The CPU takes IDLE natively while monitors record it (``_recorded_idle``)."""
        self._incoming: GuestMemory | None = None
        """A migrated-in VM's memory, filled by the migration, taken at its admission."""
        self.image_data: bytes | None = None
        """The ELF file of a VM that migrated in (its image is not a file here)."""
        self._final_request: VmState | None = None
        """The final state a cancellation of the coroutine ends in (KILLED when None)."""
        for dev in self._devices[1:]:
            if isinstance(dev, Device):
                dev.attach(self)

    # ---- public surface ----
    @property
    def nic(self) -> NicPort | None:
        """The VM's switch port (its NIC's host side), or None without a NIC."""
        return self.nic_device.port if self.nic_device is not None else None

    @property
    def mac(self) -> bytes:
        """The NIC's MAC (all zero without a NIC)."""
        return self.nic_device.port.fixed_mac if self.nic_device is not None else bytes(6)

    @property
    def pending(self) -> int:
        """Interrupt bits raised and not yet delivered."""
        return self._pending

    @property
    def swapped(self) -> bool:
        """True while the VM's memory is in its swap file."""
        return self._swapped is not None

    @property
    def hypercalls(self) -> int:
        """Hypercalls this VM has made (kept across swap-outs)."""
        return self._hypercalls + (self._cpu.hypercalls if self._cpu is not None else 0)

    @property
    def native_hypercalls(self) -> int:
        """Of ``hypercalls``, those the CPU's C hook answered (``KernelConfig.native``)."""
        return self._native + (self._cpu.native_hypercalls if self._cpu is not None else 0)

    @property
    def syscalls(self) -> int:
        """Foreign system calls the VM's CPU routed to its SYSCALL_ENTRY (kept across
        swap-outs; 0 for a guest that never registered one)."""
        return self._syscalls + (self._cpu.syscalls if self._cpu is not None else 0)

    @property
    def done(self) -> bool:
        return self._done.done()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: slices run and the time they took (cpu_ns, guest code and the
        hypercalls handled inside them), preemptions, idles, interrupts raised, batches
        delivered and the bits they carried; also what ran while the VM slept in C."""
        if self._asleep:
            assert self._sleeper is not None
            self._fold_c(self._sleeper[1])
        return self._stats

    def interrupt(self, bits: int = Irq.HOST) -> None:
        """Raise virtual interrupt bits (batched; delivered when the VM next runs)."""
        if self.state in _FINAL:
            return
        bits = int(bits) & _IRQ_ALL  # an Irq flag's own & and | cost ~0.6 us each
        if not bits:
            return
        self._pending |= bits
        self._stats["irqs_raised"] += 1
        if self._asleep and not self._leave_c():
            return  # its slice runs in C now: handed back as it ends, it sees the bits
        w = self._waker
        if w is not None and not w.done() and not self._fast_wake(w):
            w.set_result(None)

    def _deadline_reached(self, fut: asyncio.Future[None]) -> None:
        """The deadline of the IDLE the VM waits in (on ``fut``) has come."""
        if self._waker is fut and not fut.done() and not self._fast_wake(fut):
            fut.set_result(None)

    def kill(self) -> None:
        """Stop the VM now (it ends in state KILLED); no-op once it has ended."""
        self._leave_c()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait(self) -> int:
        """Wait for the VM to end and its devices to close; return the guest's exit status.

        Raises ``GuestFault`` if it faulted, ``VmKilledError`` if the host stopped it,
        ``SwapError`` if its swap file went bad, ``KernelInternalError`` if a kernel bug
        stopped it, and ``DiskError`` (whatever the guest's status) if a kept disk
        overlay could not be saved as the VM's disks closed (``close_errors``).
        """
        await asyncio.shield(self._done)
        if self.close_errors:
            raise DiskError(f"VM {self.id}: " + "; ".join(str(e) for e in self.close_errors))
        if self.state is VmState.EXITED:
            assert self.exit_status is not None
            return self.exit_status
        if self.state is VmState.FAULTED:
            assert self.fault is not None
            raise GuestFault(self.fault)
        if self.state is VmState.FAILED:
            if isinstance(self.error, SwapError):
                raise self.error
            raise KernelInternalError(f"VM {self.id}: kernel error: {self.error!r}") from self.error
        if self.state is VmState.MIGRATED:
            raise VmMigratedError(f"VM {self.id} migrated to another kernel")
        raise VmKilledError(f"VM {self.id} was stopped by {self.stopped_by or 'the host'}")

    async def until_idle(self) -> None:
        """Wait until the VM next enters idle-with-timeout (returns at once if it is idle).

        Raises like ``wait()`` if the VM ends first.
        """
        if self.state is VmState.IDLE:
            return
        fut: asyncio.Future[None] = self._rt.loop.create_future()
        self._idle_waiters.append(fut)
        await asyncio.wait({fut, self._done}, return_when=asyncio.FIRST_COMPLETED)
        if not fut.done():
            fut.cancel()
            await self.wait()
            raise VmKilledError(f"VM {self.id} ended without idling")

    # ---- DeviceHost (what its devices may do) ----
    @property
    def vm_id(self) -> int:
        return self.id

    def raise_irq(self, bits: int) -> None:
        self.interrupt(bits)

    def now_ns(self) -> int:
        """The VM's clock: the kernel's plus this VM's offset."""
        return time.monotonic_ns() - self._clock_zero

    def _set_clock_offset(self, offset_ns: int) -> None:
        """Make the VM's clock read the kernel's + ``offset_ns`` (a restored VM)."""
        self._clock_offset = offset_ns
        self._clock_zero = self._rt.epoch_ns - offset_ns
        self._wire_native()

    def call_at(self, deadline_ns: int, callback: Callable[..., Any], *args: Any) -> Timer:
        return self._rt.timers.add(deadline_ns - self._clock_offset, callback, *args)

    def post(self, completion: Completion) -> None:
        self._leave_c()  # it may change the memory, or what the next slice needs
        if self._memory is not None and not self._in_slice:
            completion(self._memory)
        elif self.state.final:
            completion(None)
        else:
            self._posted.append(completion)

    def _apply_posted(self) -> None:
        posted = self._posted
        mem = self._memory
        while posted and mem is not None:
            posted.popleft()(mem)

    # ---- the hypercalls of slot 0 ----
    def hc_terminate(self, mem: GuestMemory, arg: int) -> int:
        self._exit_request = _U32.unpack_from(mem.buf, arg + _TERM_STATUS)[0]
        return EXIT

    def hc_idle(self, mem: GuestMemory, arg: int) -> int:
        return EXIT  # always ends the slice: the VM gives up the CPU (deadline 1 is a yield)

    def hc_set_handler(self, mem: GuestMemory, arg: int) -> int:
        entry = _U32.unpack_from(mem.buf, arg + _HANDLER_ENTRY)[0]
        if entry and not mem.check(entry, 1, PROT_X | PROT_R):
            return Result.INVAL
        self._irq_entry = entry
        return Result.OK

    def hc_syscall_entry(self, mem: GuestMemory, arg: int) -> int:
        entry, save, lo, hi = _U32X4.unpack_from(mem.buf, arg + _SYSENT)
        if entry == 0:
            route = None
        elif lo <= entry < hi and mem.check(entry, 1, PROT_RX) and mem.check(save, 4, PROT_RW):
            route = SyscallRoute(entry, save, lo, hi)
        else:
            return Result.INVAL
        self._route = route
        if self._cpu is not None:
            self._cpu.set_route(route)
        return Result.OK

    # ---- resident state ----
    async def _materialize(self) -> None:
        """Make memory and CPU: from the image, or from the swap file (pages first: the
        CPU then writes its kernel page over whatever was stored)."""
        rt = self._rt
        origin = self._origin
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            mem = incoming
        else:
            mem = (
                GuestMemory(self.mem_size)
                if origin is None
                else GuestMemory(self.mem_size, origin.fd, origin.mem_offset)
            )
        try:
            regions, heap_start, heap_end = layout_regions(self.image, self.mem_size)
            if self._page_map is not None:  # swapped in: the map as it was
                regions = list(self._page_map)
            mem.set_regions(regions)
            if incoming is not None:
                pass  # migrated in: its pages (command line included) came with it
            elif self._swapped is not None:
                assert rt.store is not None
                await rt.store.read(self.id, self._swapped, mem.buf)
            elif origin is not None:  # restored: the pages are the snapshot's; a clone's
                cmd = self.cmdline.encode()  # command line is its own
                mem.write(_VREGS + abi.CMDLINE_OFFSET, cmd + b"\0" * (abi.CMDLINE_MAX + 1 - len(cmd)))
            else:
                for seg in self.image.segments:
                    mem.write(seg.vaddr, seg.data)
                cmd = self.cmdline.encode()
                mem.write(_VREGS + abi.CMDLINE_OFFSET, cmd + b"\0")
            self._vregs_head, self._vregs_tail = self._vregs_fields(heap_start, heap_end)
            cpu = VCpu(
                self.id,
                self.image.name,
                mem,
                self._dispatcher(mem),
                rt.tcg_buffer,
                self._cpu_state,
                self._route,
            )
        except BaseException:
            mem.close()
            raise
        cpu.defer_hypercalls = rt.pool is not None
        self._memory = mem
        self._cpu = cpu
        self._dispatch = cpu.dispatch
        self._wire_native()
        self._pending |= self._on_wake
        self._on_wake = 0
        self._write_vregs()
        self._apply_posted()

    def check_no_subtree(self, what: str) -> None:
        """Raise ``SubtreeError`` when this VM has live child VMs or is one itself:
        ``what`` (a snapshot, a migration) cannot carry a subtree."""
        if self.group != self.id:
            raise SubtreeError(
                f"VM {self.id} is a child VM (of VM tree {self.group}): {what} takes whole VMs only"
            )
        live = self.children.children if self.children is not None else ()
        if live:
            ids = ", ".join(str(c.vm_id) for c in live)
            raise SubtreeError(
                f"VM {self.id} has {len(live)} live child VM(s) ({ids}), which {what} does not carry: "
                "destroy them first"
            )

    def memory_before_start(self) -> GuestMemory | None:
        """The memory of a VM that has not started yet, made now from its image and its
        command line (the same bytes its boot would write) and taken by its start: how a
        parent loads data into a child before it runs (``denali.nesting``). None once the
        VM has started or ended."""
        if self._task is not None or self.state.final:
            return None
        if self._incoming is None:
            mem = GuestMemory(self.mem_size)
            try:
                regions, _, _ = layout_regions(self.image, self.mem_size)
                mem.set_regions(regions)
                for seg in self.image.segments:
                    mem.write(seg.vaddr, seg.data)
                cmd = self.cmdline.encode()
                mem.write(_VREGS + abi.CMDLINE_OFFSET, cmd + b"\0")
            except BaseException:
                mem.close()
                raise
            self._incoming = mem
        return self._incoming

    def _dispatcher(self, mem: GuestMemory) -> Callable[[int, int], int]:
        dispatch = self._rt.table.dispatcher(self._devices, mem)
        ip = self._interposer
        return ip.wrap(dispatch, mem) if ip is not None else dispatch

    # ---- monitors (the seam of denali.interpose; denali.monitor is the only caller) ----
    def set_interposer(self, interposer: Interposer | None) -> None:
        """Install the monitor stack's interposer (None: no monitor) and rewire."""
        self._leave_c()
        self._interposer = interposer
        self.rewire()

    def rewire(self) -> None:
        """Give a resident CPU the dispatch function for the current interposition (the
        monitor layer calls this whenever ``interposed`` changes)."""
        self._leave_c()
        cpu, mem = self._cpu, self._memory
        if cpu is not None and mem is not None:
            cpu.dispatch = self._dispatch = self._dispatcher(mem)
            self._wire_native()

    def _wire_native(self) -> None:
        """Let a resident CPU take CLOCK, NET_SEND, TIMER_SET, IDLE and CONSOLE_WRITE
        natively (``VCpu``'s ``set_native_*``) unless the kernel keeps to pure Python or
        a monitor interposes on the call (on NET_SEND: or on the frames sent,
        ``Nic.native_sender``); when every monitor on a call only records it, it stays
        native and they get records of it (CLOCK, NET_SEND, TIMER_SET: logged by the
        CPU, read on the loop's thread, so not with worker threads; IDLE: reported by
        this VM once it returns; CONSOLE_WRITE: not logged, so Python's then)."""
        cpu = self._cpu
        if cpu is None:
            return
        ip = self._interposer
        hc = ip is not None and "hypercall" in self.interposed

        def path(nr: int, logged_by_cpu: bool = True) -> tuple[bool, bool]:
            """(native, recorded) for hypercall ``nr``."""
            if not self._rt.native:
                return False, False
            if ip is None or not hc or not ip.interposes_on(nr):
                return True, False
            ok = ip.records(nr) and (self._rt.pool is None or not logged_by_cpu)
            return ok, ok

        clock, clock_log = path(Hc.CLOCK)
        cpu.set_native_clock(clock, self._clock_zero, clock_log)
        nic = self.nic_device
        sender = nic.native_sender() if nic is not None else None
        send, send_log = path(Hc.NET_SEND) if sender is not None else (False, False)
        timer, timer_log = path(Hc.TIMER_SET)
        cpu.drain_tx()  # what it held goes out before the path changes
        cpu.set_native_send(send, *(sender or (None, None)))
        cpu.set_native_timer(timer, self.clock.arm)
        cpu.set_call_log(send_log or timer_log)
        idle, self._idle_recorded = path(Hc.IDLE, logged_by_cpu=False)
        cpu.set_native_idle(idle, answers=not self._idle_recorded)
        console, console_log = path(Hc.CONSOLE_WRITE)  # (not in the call log: Python's then)
        cpu.set_native_console(console and not console_log, self.console.feed)

    async def _interposed_fault(self, cpu: VCpu) -> VmState | None:
        """The monitors' verdict on a fault: None to resume, else the final state."""
        ip = self._interposer
        if ip is not None and "fault" in self.interposed:
            outcome = await ip.fault(cpu)
            if outcome is Outcome.RESUME:
                return None
            if outcome is Outcome.STOP:
                return VmState.KILLED
        self.fault = cpu.fault
        return VmState.FAULTED

    async def _complete_interposed(self, cpu: VCpu) -> VmState | None:
        """Finish a hypercall the monitors took out of the slice: None to go on, else
        the final state."""
        ip = self._interposer
        assert ip is not None
        outcome = await ip.complete(cpu)
        if outcome is Outcome.RESUME:
            if not ip.idled:  # every slice ends in a suspension (see _main)
                await asyncio.sleep(0)
            return None
        if outcome is Outcome.TERMINATE:
            self.exit_status = ip.exit_status
            return VmState.EXITED
        return VmState.KILLED

    def _vregs_fields(self, heap_start: int, heap_end: int) -> tuple[bytes, bytes]:
        """The constant kernel fields of the register page, before and after the
        per-slice ones (time_ns, cpu_khz, pending) and the guest's irq_enable."""
        rt = self._rt
        fields = {
            "magic": abi.VREGS_MAGIC,
            "abi_version": abi.ABI_VERSION,
            "vm_id": self.id,
            "mem_size": self.mem_size,
            "time_ns": 0,
            "cpu_khz": rt.cpu_khz,
            "pending": 0,
            "irq_enable": 0,
            "heap_start": heap_start,
            "heap_end": heap_end,
            "cmdline_len": len(self.cmdline.encode()),
            "mac": self.mac,
            "_pad0": 0,
            "slice_ns": rt.slice_ns,
            "generation": self.generation,
        }
        block = abi.VREGS.codec().pack(*(fields[f.name] for f in abi.VREGS.fields))
        return block[: _V["time_ns"]], block[_V["heap_start"] :]

    def _write_vregs(self) -> None:
        """Rewrite every kernel field of the register page (all but irq_enable)."""
        assert self._memory is not None
        buf = self._memory.buf
        buf[_HEAD[0] : _HEAD[1]] = self._vregs_head
        _TIME_KHZ_PENDING.pack_into(buf, _OFF_TIME, self.now_ns(), self._rt.cpu_khz, self._pending)
        buf[_TAIL[0] : _TAIL[1]] = self._vregs_tail

    def _drop_resident(self) -> None:
        cpu, mem = self._cpu, self._memory
        if cpu is not None and self._interposer is not None:
            self._interposer.flush_records()  # what the CPU logged, before it goes
        self._cpu = self._memory = self._dispatch = None
        if cpu is not None:
            self._hypercalls += cpu.hypercalls
            self._native += cpu.native_hypercalls
            self._syscalls += cpu.syscalls
            cpu.close()
        if mem is not None:
            mem.close()

    # ---- swap (Evictable) ----
    def evictable(self) -> bool:
        """True while the VM may be swapped out: idle, resident, no device work in flight."""
        if (
            self.state is not VmState.IDLE
            or self._memory is None
            or self._swapping_in
            or self._evicting is not None
            or self._posted
            or self._migrating
        ):
            return False
        return not any(isinstance(d, Device) and d.busy() for d in self._devices[1:])

    def touched_bytes(self) -> int:
        mem = self._memory
        return touched_bytes(mem.address, mem.size) if mem is not None else 0

    async def evict(self) -> bool:
        """Write the VM's touched pages out and free its engine and memory; False when it
        is not evictable (or ended meanwhile). ``SwapError`` if the swap file cannot be
        written: the VM then stays resident, unchanged."""
        rt = self._rt
        if not self.evictable() or rt.store is None or rt.gate is None or not self._leave_c():
            return False
        assert self._cpu is not None and self._memory is not None
        self._evicting = rt.loop.create_future()
        try:
            state = self._cpu.save()
            mem = self._memory
            image = await rt.store.write(
                self.id, mem.buf, mem.address, abi.Layout.KERNEL_PAGE // abi.PAGE_SIZE
            )
            if self.state.final:
                return False
            self._cpu_state = state
            self._page_map = mem.regions
            self._swapped = image
            self._drop_resident()  # what stays of a swapped VM is small (CpuState, SwapImage)
            rt.gate.release(self.id)
            return True
        finally:
            done, self._evicting = self._evicting, None
            done.set_result(None)
            if self.state.final:  # ended while writing: we close
                self._drop_resident()

    async def _ensure_resident(self) -> None:
        """Bring a swapped VM back (waiting for the gatekeeper); no-op when resident."""
        if self._evicting is not None:
            await asyncio.shield(self._evicting)
        image = self._swapped
        rt = self._rt
        if image is None:
            if self._memory is None:  # restored into IDLE and woken for the first time
                if rt.gate is not None:
                    await rt.gate.admit(self.id, self._image_cost())
                await self._materialize()
            return
        assert rt.gate is not None
        await rt.gate.admit(self.id, image.stored * abi.PAGE_SIZE + ENGINE_COST)
        self._swapping_in = True
        try:
            await self._materialize()
        finally:
            self._swapping_in = False
        self._swapped = None
        self._page_map = None

    def _image_cost(self) -> int:
        if self._origin is not None:
            return self._origin.stored_pages * abi.PAGE_SIZE + ENGINE_COST
        return sum(s.page_end - s.page_start for s in self.image.segments) + 4 * abi.PAGE_SIZE + ENGINE_COST

    # ---- the coroutine ----
    def start(self) -> None:
        """Start the VM's coroutine (the kernel calls this once it has published the VM)."""
        self._task = self._rt.loop.create_task(self._main(), name=f"denali-vm-{self.id}")
        # A task cancelled before its first step never runs _main's cleanup: do it here.
        self._task.add_done_callback(lambda _t: self._finish(VmState.KILLED))

    def _before_slice(self) -> bool:
        """Apply posted completions, refresh the virtual registers, deliver pending
        interrupts; False on fault."""
        if self._posted:
            self._apply_posted()
        self._write_vregs()
        pending = self._pending
        if pending and self._irq_entry:
            assert self._memory is not None and self._cpu is not None
            buf = self._memory.buf
            if _U32.unpack_from(buf, _OFF_IE)[0] == 1:
                self._pending = 0
                _U32.pack_into(buf, _OFF_PENDING, 0)
                ip = self._interposer
                if ip is not None and "interrupt" in self.interposed:
                    pending = ip.irq(pending)  # the monitors see the batch (and may drop bits)
                    if not pending:
                        return True
                _U32.pack_into(buf, _OFF_IE, 0)
                self._stats["irq_batches"] += 1
                self._stats["irq_bits_delivered"] += pending.bit_count()
                if not self._cpu.deliver_irq(self._irq_entry, pending):
                    return False
        return True

    async def _idle(self, arg: int) -> bool:
        """Complete an IDLE hypercall whose struct is at ``arg`` (checked at dispatch);
        True if the VM waited."""
        rt = self._rt
        if self._memory is not None:
            deadline = _U64.unpack_from(self._memory.buf, arg + _IDLE["deadline_ns"])[0]
        else:  # restored, not resident yet: it waits without memory or an engine
            deadline = self._idle_deadline
        waited = False
        self._idle_arg = arg
        self._idle_deadline = deadline
        if self._waits(deadline):
            fut: asyncio.Future[None] = rt.loop.create_future()
            self._wait_on(fut, deadline)
            if self._pause is not None:
                self._paused_now(VmState.IDLE)
            try:
                await fut
            finally:
                self._stop_waiting()
            if self._fast_exit is not None:  # woken, completed and run by _fast_wake
                return True
            if self._pause is not None:  # woken while paused: run only once resumed
                await self._hold(VmState.IDLE)
            waited = True
        elif self._pause is not None:
            await self._hold(VmState.IDLE)
        if self._memory is None or self._evicting is not None or self._swapped is not None:
            await self._ensure_resident()  # swapped out (or going) while it waited
        if self._idle_arg is not None:  # the IDLE it waits in now (_fast_wake may have
            arg = self._idle_arg  # run the VM on to a later one while this frame slept)
        self._idle_arg = None
        ip = self._interposer
        if ip is not None and ip.gating:  # a monitor holds the VM before IDLE returns
            await ip.gate()
        self._idle_returns(arg, ip)
        return waited

    def _waits(self, deadline: int) -> bool:
        """An IDLE with ``deadline`` (0: none) waits now: no interrupt is pending and the
        deadline has not come."""
        return not self._pending and (deadline == 0 or deadline > self.now_ns())

    def _wait_on(self, fut: asyncio.Future[None], deadline: int) -> None:
        """The VM starts waiting in IDLE (``_idle_arg``) on ``fut``, which an interrupt,
        the deadline's timer (``_deadline_reached``) or ``_fast_wake`` resolves; those
        waiting for it to idle (``until_idle``) and the gatekeeper hear of it."""
        self._waker = fut
        self.state = VmState.IDLE
        self._stats["idles"] += 1
        if self._idle_waiters:
            for w in self._idle_waiters:
                if not w.done():
                    w.set_result(None)
            self._idle_waiters.clear()
        if self._sleep_in_c(deadline):
            self._idle_timer = None
        else:
            self._idle_timer = self.call_at(deadline, self._deadline_reached, fut) if deadline else None
        gate = self._rt.gate
        if gate is not None and self._memory is not None:
            gate.vm_idle(self)

    def _stop_waiting(self) -> None:
        """The VM no longer waits (``_wait_on``): interrupts only set bits again."""
        self._leave_c()
        self._waker = None
        timer = self._idle_timer
        if timer is not None and not timer.cancelled:
            timer.cancel()
        self._idle_timer = None
        gate = self._rt.gate
        if gate is not None:
            gate.vm_busy(self.id)

    def _plain(self) -> bool:
        """Nothing about the VM needs its coroutine to run a slice: resident, no monitor,
        no pause (``_fast_wake``, ``inline_turn``)."""
        return not (
            self._cpu is None
            or self._memory is None
            or self._interposer is not None
            or self._pause is not None
            or self._evicting is not None
            or self._swapped is not None
        )

    def _idle_returns(self, arg: int, ip: Interposer | None) -> None:
        """IDLE at ``arg`` returns: the pending bits (the monitors may drop some) and the
        clock go to its out fields, OK to EAX."""
        if self._posted:
            self._apply_posted()
        mem = self._memory
        cpu = self._cpu
        assert mem is not None and cpu is not None
        mask = self._pending
        self._pending = 0
        if mask and ip is not None and "interrupt" in self.interposed:
            mask = ip.irq(mask)
        if mask:
            self._stats["irq_batches"] += 1
            self._stats["irq_bits_delivered"] += mask.bit_count()
        _U64.pack_into(mem.buf, arg + _IDLE["now_ns"], self.now_ns())
        _U32.pack_into(mem.buf, arg + _IDLE["pending"], mask)
        if mem.dirty is not None:  # written long after the hypercall's check
            mem.mark(arg, abi.HYPERCALL_BY_NR[Hc.IDLE].args.size)
        cpu.set_result(Result.OK)

    def _fast_wake(self, fut: asyncio.Future[None]) -> bool:
        """Wake the VM waiting in IDLE on ``fut`` without a step of its coroutine: while the
        kernel fires timers (within one slice length of the loop's turn), with a lane free
        and nobody queued for it, and nothing special about the VM (no monitor, no pause,
        resident, slices on the loop's thread), IDLE returns and the next slice runs right
        here. A slice that ends in another IDLE that waits parks the VM again on the same
        future; any other end wakes the coroutine with the slice's exit to handle
        (``_fast_exit``). False: nothing was done (the caller wakes the coroutine)."""
        rt = self._rt
        timers = rt.timers
        if (
            not timers.fast_until
            or rt.pool is not None
            or self._idle_arg is None
            or self.state is not VmState.IDLE
            or not self._plain()
            or time.monotonic_ns() >= timers.fast_until
        ):
            return False
        arb = rt.arbiter
        lane = arb.take_free()
        if lane is None:
            return False
        cpu = self._cpu
        assert cpu is not None and self._memory is not None
        arg = self._idle_arg
        self._stop_waiting()  # not waiting while it runs
        self._idle_arg = None
        self._stats["fast_wakes"] += 1
        try:
            self._idle_returns(arg, None)
            self.state = VmState.RUNNING
            reason = self._slice(lane, rt.slice_ns)
        except Exception as exc:  # a kernel bug: this VM fails (its coroutine says so),
            cpu.error = exc  # not the timer callback that woke it
            reason = Exit.INTERNAL
        finally:
            arb.release(lane)
        self._woken_slice_ended(fut, reason)
        return True

    def _woken_slice_ended(self, fut: asyncio.Future[None], reason: Exit) -> None:
        """The slice run for the VM woken from its wait on ``fut`` ended with ``reason``
        (``_fast_wake``, or C, ``_out_of_c``): an IDLE that waits parks it again on
        ``fut``; any other end wakes its coroutine with the exit to handle."""
        cpu = self._cpu
        if reason is Exit.HYPERCALL and cpu is not None and cpu.hcall_nr == Hc.IDLE and not cpu.deferred:
            assert self._memory is not None
            arg = cpu.hcall_arg
            deadline = _U64.unpack_from(self._memory.buf, arg + _IDLE["deadline_ns"])[0]
            if self._waits(deadline):
                self._idle_arg = arg  # waits again, on the same future
                self._idle_deadline = deadline
                self._wait_on(fut, deadline)
                return
        self.state = VmState.RUNNABLE
        self._fast_exit = reason
        fut.set_result(None)

    # ---- sleeping in C (denali.sleep) ----
    def _sleep_in_c(self, deadline: int) -> bool:
        """Hand the wait just begun (in the IDLE at ``_idle_arg``, until ``deadline`` or
        the clock's timer) to C when nothing about the VM needs Python; True if it went."""
        sleep = self._rt.sleep
        if (
            sleep is None
            or self._posted
            or self._pending
            or self._fast_exit is not None
            or self._idle_arg is None
            or not self._plain()
        ):
            return False
        cpu, mem = self._cpu, self._memory
        assert cpu is not None and mem is not None
        if mem.dirty is not None or not cpu.ready_for_c():
            return False
        if self._sleeper is None or self._sleeper[0] is not cpu:
            self._sleeper = (cpu, cpu.engine.sleeper(self.id))
        cell = self._sleeper[1]
        cell.idle_arg = self._idle_arg
        cell.idle_deadline = deadline
        cell.timer_deadline = self.clock.deadline
        cell.vregs = _VREGS
        cell.irq_timer = Irq.TIMER
        cell.time_at = _V["time_ns"]
        cell.tail_at = _V["heap_start"]
        cell.cpu_khz = self._rt.cpu_khz
        page = ctypes.addressof(cell.page)
        ctypes.memmove(page, self._vregs_head, len(self._vregs_head))
        ctypes.memmove(page + _V["heap_start"], self._vregs_tail, len(self._vregs_tail))
        if not sleep.sleep(self, cell):
            return False
        self.clock.hand_over(lambda: int(cell.timer_deadline))
        self._asleep = True
        return True

    def _leave_c(self) -> bool:
        """Take the VM's wait out of C before anything looks at or changes more of it:
        True once it is Python's (also when it never was C's); False while C runs its
        slice (a callback of that slice asked: it is handed back when the slice ends)."""
        if not self._asleep:
            return True
        sleep = self._rt.sleep
        assert sleep is not None and self._sleeper is not None
        if not sleep.unpark(self._sleeper[1]):
            return False
        self._out_of_c()
        return True

    def _fold_c(self, cell: _uc.SleeperCell) -> None:
        """Add what C counted for the VM to its stats, and zero it there."""
        if not cell.wakes and not cell.idles:
            return
        st = self._stats
        irqs = cell.irqs
        st["fast_wakes"] += cell.wakes
        st["irqs_raised"] += irqs
        st["irq_batches"] += irqs  # C only ever delivers the TIMER bit, alone
        st["irq_bits_delivered"] += irqs
        st["slices"] += cell.slices
        st["cpu_ns"] += cell.cpu_ns
        st["idles"] += cell.idles
        cell.wakes = cell.irqs = cell.slices = cell.cpu_ns = cell.idles = 0

    def _out_of_c(self) -> None:
        """The VM's sleeper is off C's heap (taken out, or handed back): it is Python's
        again, as the Python path would have left it. Still waiting (not run, or run
        into an IDLE with no deadline): in the IDLE the cell names, with its deadline's
        timer again; run into any other end (``BACK_SLICE``): that end is handled as
        ``_fast_wake`` handles one."""
        assert self._sleeper is not None
        cpu, cell = self._sleeper
        self._asleep = False
        self._fold_c(cell)
        why, cell.why = cell.why, 0
        self.clock.arm(cell.timer_deadline)
        fut = self._waker
        if why != _uc.BACK_SLICE:
            cpu.left_c()
            self._idle_arg = cell.idle_arg
            self._idle_deadline = cell.idle_deadline
            if cell.idle_deadline and fut is not None and not fut.done():
                self._idle_timer = self.call_at(cell.idle_deadline, self._deadline_reached, fut)
            return
        reason = cpu.ran_in_c(cell.err)
        cpu.after_slice()
        self._stop_waiting()
        self._idle_arg = None
        if fut is None or fut.done():  # killed meanwhile: its coroutine only ends
            return
        self._woken_slice_ended(fut, reason)

    def _slice(self, lane: Lane, length_ns: int, until: int = 0) -> Exit:
        """Deliver what is pending and run one slice on ``lane`` (the caller holds it) on
        the loop's thread, for ``length_ns`` at most and not past ``until``
        (``time.monotonic_ns()``; 0: no bound); its exit."""
        cpu = self._cpu
        assert cpu is not None
        if not self._before_slice():  # the interrupt frame did not fit: a fault
            return Exit.FAULT
        stats = self._stats
        if self.first_slice_ns is None:
            self.first_slice_ns = self._rt.now_ns()
        stats["slices"] += 1
        began = time.monotonic_ns()
        deadline = began + length_ns
        reason = cpu.run(lane, until if until and until < deadline else deadline)
        stats["cpu_ns"] += time.monotonic_ns() - began
        cpu.after_slice()  # the frames and timer the C hook kept, to the devices
        return reason

    def _completes_yield(self, reason: Exit, cpu: VCpu) -> bool:
        """If the slice ended in an IDLE that does not wait (a yield: interrupts pending or
        its deadline passed) with nothing else to it (no monitor, no pause, a hypercall
        answered in the slice), complete it now: True, and the VM is runnable again."""
        if (
            reason is not Exit.HYPERCALL
            or cpu.hcall_nr != Hc.IDLE
            or cpu.deferred
            or self._interposer is not None
            or self._pause is not None
            or self._memory is None
        ):
            return False
        if cpu.yielded and not self._pending and not self._posted and self._memory.dirty is None:
            cpu.set_result(Result.OK)  # the hook wrote the out fields: nothing was pending
            return True
        arg = cpu.hcall_arg
        deadline = _U64.unpack_from(self._memory.buf, arg + _IDLE["deadline_ns"])[0]
        if self._waits(deadline):
            return False
        self._idle_deadline = deadline
        self._idle_returns(arg, None)
        return True

    def inline_turn(self, lane: Lane, fut: asyncio.Future[Lane | None]) -> bool:
        """The arbiter gave this VM its turn while its coroutine waits for it on ``fut``
        (``CpuArbiter.inline``): run the slice here, up to ``inline_until``, if nothing
        is special about the VM (no monitor, no pause, resident). A yield makes it
        wait again on ``fut``; a slice the end of the inline time cut hands it the lane
        for what is left of its slice (``_turn_rest``; False), unless little is; any
        other end wakes the coroutine with the exit to handle (``_fast_exit``, ``fut``
        done with None). False: its coroutine takes the lane (nothing ran, or the rest)."""
        if self._fast_exit is not None or not self._plain():
            return False
        cpu = self._cpu
        assert cpu is not None
        rt = self._rt
        arb = rt.arbiter
        self.state = VmState.RUNNING
        self._stats["inline_turns"] += 1
        began = time.monotonic_ns()
        try:
            reason = self._slice(lane, rt.slice_ns, arb.inline_until)
            again = self._completes_yield(reason, cpu)
        except Exception as exc:  # a kernel bug: the VM's coroutine reports it
            cpu.error = exc
            reason, again = Exit.INTERNAL, False
        self.state = VmState.RUNNABLE
        if fut.done():  # killed meanwhile: its coroutine only ends
            return True
        if again:
            arb.wait_again(self.id, fut, self.group)
        elif reason is Exit.PREEMPTED:  # the inline time ran out before its slice did
            rest = rt.slice_ns - (time.monotonic_ns() - began)
            if rest > rt.slice_ns // 8:
                self._turn_rest = rest
                return False  # the rest of its slice, in a turn of its own
            self._stats["preemptions"] += 1  # (about) its whole slice: as preempted
            arb.wait_again(self.id, fut, self.group)
        else:
            self._fast_exit = reason
            fut.set_result(None)
        return True

    async def _recorded_idle(self, cpu: VCpu) -> bool:
        """An IDLE the CPU took natively while every monitor on IDLE only records it: the
        monitors get its structure as it was and as ``_idle`` left it."""
        mem = self._memory
        arg = cpu.hcall_arg
        assert mem is not None
        size = abi.HYPERCALL_BY_NR[Hc.IDLE].args.size
        before = mem.read(arg, size)
        idled = await self._idle(arg)
        ip = self._interposer
        mem = self._memory  # resident again (it may have been swapped out while idle)
        if ip is not None and mem is not None:
            ip.record_call(Hc.IDLE, before, mem.read(arg, size))
        return idled

    async def _main(self) -> None:
        rt = self._rt
        arb = rt.arbiter
        pool = rt.pool
        slice_ns = rt.slice_ns
        stats = self._stats
        idled = False
        final = VmState.KILLED
        # INVARIANT: every slice ends in a suspension (an idle VM waits; a preempted VM
        # or a yield whose lane went to another VM waits for its next turn in acquire,
        # and one whose lane nobody took sleeps for one loop turn), so the loop gets
        # control at least once per slice even when the CPU is uncontended.
        try:
            # the gatekeeper admits fresh VMs in FIFO order; a VM restored into IDLE waits
            # there first, without memory or an engine, until something wakes it
            if self._memory is None and not (self._origin is not None and self._idle_arg is not None):
                if rt.gate is not None:
                    await rt.gate.admit(self.id, self._image_cost())
                await self._materialize()
            if self._idle_arg is not None:  # restored from a snapshot taken in IDLE
                idled = await self._idle(self._idle_arg)
            next_exit: Exit | None = None
            while True:
                if next_exit is not None:  # _fast_wake or an inline turn ran a slice and
                    reason, handed, again, next_exit = next_exit, True, False, None  # released the lane
                    cpu = self._cpu
                    assert cpu is not None
                else:
                    if self._pause is not None:  # a slice boundary: pause here if asked
                        arb.withdraw(self.id)
                        await self._hold(VmState.RUNNABLE)
                    self.state = VmState.RUNNABLE
                    ip = self._interposer
                    if ip is not None and ip.gating:  # a monitor holds the VM (denali.interpose)
                        arb.withdraw(self.id)
                        await ip.gate()
                    lane, _ = await arb.acquire(self.id, idled, self.group)
                    if lane is None:  # the arbiter ran the turn inline: its exit to handle
                        next_exit, self._fast_exit = self._fast_exit, None
                        continue
                    reason = Exit.INTERNAL  # until the slice says otherwise (an exception: not PREEMPTED)
                    handed = again = False
                    try:
                        self.state = VmState.RUNNING
                        cpu = self._cpu
                        assert cpu is not None
                        if pool is None:
                            arb.inline_until = time.monotonic_ns() + slice_ns  # the loop ran just now
                            rest, self._turn_rest = self._turn_rest, 0
                            reason = self._slice(lane, rest or slice_ns)
                        elif not self._before_slice():
                            reason = Exit.FAULT
                        else:
                            if self.first_slice_ns is None:
                                self.first_slice_ns = rt.now_ns()
                            stats["slices"] += 1
                            began = time.monotonic_ns()
                            reason = await self._run_on_worker(pool, cpu, lane, began + slice_ns)
                            stats["cpu_ns"] += time.monotonic_ns() - began
                            cpu.after_slice()
                        # a yield goes back in the queue first where turns may run inline
                        # (else it releases, then completes: the pure-Python path's cheaper way)
                        again = reason is Exit.PREEMPTED or (
                            arb.inline is not None and self._completes_yield(reason, cpu)
                        )
                    finally:
                        # runnable again (preempted, or a yield): to the back of the queue,
                        # in the same move as the lane goes to whoever runs next
                        if again:
                            handed = arb.requeue(lane, self.id, self.group)
                        else:
                            handed = arb.release(lane)
                    if again and self._fast_exit is not None:  # its own next turn ran inline
                        arb.withdraw(self.id)  # (during requeue): collect that turn
                        next_exit, self._fast_exit = self._fast_exit, None
                        if reason is Exit.PREEMPTED:
                            stats["preemptions"] += 1
                        continue
                idled = False
                if reason is Exit.PREEMPTED:
                    stats["preemptions"] += 1
                    if not handed:  # else acquire waits for the turn: the loop runs then
                        await asyncio.sleep(0)  # the loop runs at least once per slice
                elif again:  # a yield, completed: as a preemption
                    if not handed:
                        await asyncio.sleep(0)
                elif reason is Exit.HYPERCALL:
                    if cpu.deferred and not self._dispatch_deferred(cpu):
                        continue
                    if self._interposer is not None and self._interposer.exited:
                        ended = await self._complete_interposed(cpu)
                        if ended is None:
                            continue
                        final = ended
                        return
                    if cpu.hcall_nr == Hc.TERMINATE:
                        self.exit_status = self._exit_request
                        final = VmState.EXITED
                        return
                    # INVARIANT: only TERMINATE and IDLE handlers return EXIT.
                    if self._idle_recorded:  # the CPU took it natively; the monitors record it
                        idled = await self._recorded_idle(cpu)
                    else:
                        idled = await self._idle(cpu.hcall_arg)
                        if self._fast_exit is not None:  # woken by _fast_wake, which ran on
                            next_exit, self._fast_exit = self._fast_exit, None
                            continue
                    if not idled and not handed:  # a yield that kept the lane: let every
                        await asyncio.sleep(0)  # other runnable VM queue up first
                elif reason is Exit.FAULT:
                    ended = await self._interposed_fault(cpu)
                    if ended is None:
                        continue
                    final = ended
                    return
                else:
                    self.error = cpu.error
                    log.error(
                        "VM %d: kernel error in a hypercall; this VM is stopped", self.id, exc_info=cpu.error
                    )
                    final = VmState.FAILED
                    return
        except asyncio.CancelledError:
            final = self._final_request or VmState.KILLED
        except SwapError as exc:
            self.error = exc
            log.error("VM %d stopped: %s", self.id, exc)
            final = VmState.FAILED
        except Exception as exc:  # a kernel bug: fail this VM, keep the others
            self.error = exc
            log.error("VM %d: kernel error; this VM is stopped", self.id, exc_info=exc)
            final = VmState.FAILED
        finally:
            arb.withdraw(self.id)  # a turn taken before a kill goes on to the next VM
            self._finish(final)

    async def _run_on_worker(self, pool: Executor, cpu: VCpu, lane: Lane, deadline: int) -> Exit:
        """One slice on a worker thread. Device completions posted meanwhile wait for its
        end. If the VM is killed meanwhile, the slice is stopped and waited for: the
        engine must not be freed while it runs."""
        self._in_slice = True
        fut = self._rt.loop.run_in_executor(pool, cpu.run, lane, deadline)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # INVARIANT: the engine is not freed while a worker runs it, even if this
            # task is cancelled again while it waits.
            while not fut.done():
                cpu.engine.request_stop()
                try:
                    await asyncio.wait({fut}, timeout=0.001)
                except asyncio.CancelledError:
                    pass
            raise
        finally:
            self._in_slice = False
            self._apply_posted()

    def _dispatch_deferred(self, cpu: VCpu) -> bool:
        """Handle, on the loop, a hypercall the CPU deferred (worker-thread slices).

        Returns True when the hypercall must still be completed by the coroutine
        (its handler said EXIT), False when it is done.
        """
        res = cpu.dispatch(cpu.hcall_nr, cpu.hcall_arg)
        if res == EXIT:
            return True
        cpu.set_result(res)
        cpu.answered(cpu.hcall_nr, cpu.hcall_arg, res)
        return False

    def _finish(self, final: VmState) -> None:
        if self.state.final:
            return
        rt = self._rt
        self.ended_ns = rt.now_ns()
        self.state = final
        pause, self._pause = self._pause, None
        if pause is not None:
            pause.end()
        try:
            self.console.close()
            posted, self._posted = self._posted, deque()
            for completion in posted:
                completion(None)
            if self._evicting is None:
                self._drop_resident()
        finally:  # whatever failed above, the VM is unpublished and its devices closed
            if rt.gate is not None:
                rt.gate.forget(self.id)
            if rt.store is not None:
                rt.store.remove_area(self.id)
            if self._origin is not None:
                self._origin.close()
                self._origin = None
            if self._incoming is not None:
                self._incoming.close()
                self._incoming = None
            self._on_end(self)
            waiting = [d for d in self._devices[1:] if isinstance(d, Device) and not d.close_now()]
            if waiting:
                rt.owner.spawn(self._close_devices(waiting), name=f"denali-vm-{self.id}-close")
            elif not self._done.done():
                self._done.set_result(None)

    async def _close_devices(self, waiting: list[Device]) -> None:
        """Close the devices that must wait (disks write their overlays' bitmaps), then mark
        the VM done."""
        try:
            if self.children is not None:  # the subtree ends first (it may use our disks)
                await self.children.aclose()
            for dev in waiting:
                await dev.aclose()
            if self.disks is not None:
                self.close_errors.extend(self.disks.close_errors)
        finally:
            if not self._done.done():
                self._done.set_result(None)

    # ---- pause, snapshot and restore ----
    async def pause(self) -> None:
        """Stop the VM at its next slice boundary (at once when it waits in IDLE) and keep
        it there until ``resume()``; returns once it is PAUSED (at once if it already is).
        ``VmStateError`` if it has ended or ends meanwhile."""
        if self.state.final or self._task is None:
            raise VmStateError(f"VM {self.id} is {self.state.value}: it cannot be paused")
        if self.state is VmState.PAUSED:
            return
        self._leave_c()
        if self._pause is None:
            self._pause = _Pause(self._rt.loop)
        pause = self._pause
        if self.state is VmState.IDLE and self._waker is not None and not self._waker.done():
            self._paused_now(VmState.IDLE)  # waiting in IDLE: paused as it is
            return
        await asyncio.wait({pause.reached, self._done}, return_when=asyncio.FIRST_COMPLETED)
        if not self.paused:
            raise VmStateError(f"VM {self.id} ended ({self.state.value}) before it paused")

    @property
    def origin(self) -> SnapshotFile | None:
        """The snapshot this VM was restored or cloned from (its memory maps it), or None."""
        return self._origin

    @property
    def paused(self) -> bool:
        """True while the VM is PAUSED."""
        return self.state is VmState.PAUSED

    def resume(self) -> None:
        """Let a paused VM run again (a pause not yet reached is withdrawn); no-op when it
        is not paused. ``VmStateError`` if it has ended."""
        if self.state.final:
            raise VmStateError(f"VM {self.id} is {self.state.value}: it cannot be resumed")
        pause, self._pause = self._pause, None
        if pause is None:
            return
        if self.state is VmState.PAUSED and pause.before is not None:
            self.state = pause.before
        pause.end()

    def _paused_now(self, before: VmState) -> None:
        assert self._pause is not None
        self._pause.before = before
        self.state = VmState.PAUSED
        if not self._pause.reached.done():
            self._pause.reached.set_result(None)

    async def _hold(self, before: VmState) -> None:
        """Wait here, PAUSED, until ``resume()`` (the coroutine's pause point)."""
        pause = self._pause
        assert pause is not None
        if self.state is not VmState.PAUSED:
            self._paused_now(before)
        await asyncio.shield(pause.resumed)

    async def snapshot_state(self) -> VmImage:
        """Everything of this paused VM a snapshot holds (see ``denali.snapshot``). Waits
        for a swap-out under way and for device work in flight (disk requests) to finish
        first. ``VmStateError`` when the VM is not paused, when a device's state cannot be
        saved (a throwaway disk overlay that holds writes), or when the VM ends meanwhile;
        ``SubtreeError`` when it has live child VMs or is one."""
        if self.state is not VmState.PAUSED:
            raise VmStateError(f"VM {self.id} is {self.state.value}: pause it before a snapshot")
        self.check_no_subtree("a snapshot")  # a paused VM makes no children meanwhile
        if self._evicting is not None:
            await asyncio.shield(self._evicting)
        for _ in range(10_000):  # device work in flight completes (10 s at most)
            if not any(d.busy() for d in self.devices()) and not self._posted:
                break
            await asyncio.sleep(0.001)
        else:
            raise VmStateError(f"VM {self.id}: its devices stayed busy; no snapshot taken")
        if self.state is not VmState.PAUSED:
            raise VmStateError(f"VM {self.id} is {self.state.value}: no snapshot taken")
        meta = self.saved_meta()
        page_map = bytearray(self.mem_size // abi.PAGE_SIZE)
        if self._origin is not None:  # the snapshot's pages this VM never wrote count too
            runs = self._origin.runs
            for k in range(0, len(runs), 2):
                page_map[runs[k] : runs[k] + runs[k + 1]] = b"\1" * runs[k + 1]
        if self._memory is not None:
            assert self._cpu is not None
            cpu = self._cpu.save()
            mem = self._memory.buf
            present = resident_pages(self._memory.address, self.mem_size).translate(_BIT0)
            n = len(page_map)
            page_map = bytearray(
                (int.from_bytes(page_map, "little") | int.from_bytes(present, "little")).to_bytes(n, "little")
            )
        elif self._swapped is None:  # restored and never woken: its memory is its snapshot's
            assert self._origin is not None
            scratch = GuestMemory(self.mem_size, self._origin.fd, self._origin.mem_offset)
            page_map[abi.Layout.KERNEL_PAGE // abi.PAGE_SIZE] = 0
            return VmImage(meta, self._cpu_state, scratch.buf, page_runs(page_map), scratch)
        else:  # swapped out: its pages come back from its swap file (checked), not into RAM
            assert self._swapped is not None and self._rt.store is not None
            cpu = self._cpu_state
            scratch = (
                GuestMemory(self.mem_size)
                if self._origin is None
                else GuestMemory(self.mem_size, self._origin.fd, self._origin.mem_offset)
            )
            try:
                await self._rt.store.read(self.id, self._swapped, scratch.buf)
            except BaseException:
                scratch.close()
                raise
            stored = array("I")
            stored.frombytes(self._swapped.pages)
            for k in range(0, len(stored), 2):
                page_map[stored[k] : stored[k] + stored[k + 1]] = b"\1" * stored[k + 1]
            page_map[abi.Layout.KERNEL_PAGE // abi.PAGE_SIZE] = 0
            return VmImage(meta, cpu, scratch.buf, page_runs(page_map), scratch)
        page_map[abi.Layout.KERNEL_PAGE // abi.PAGE_SIZE] = 0  # rebuilt from the CPU state
        return VmImage(meta, cpu, mem, page_runs(page_map))

    def saved_meta(self) -> dict[str, Any]:
        """The ``meta`` of this paused VM's snapshot (identity, clock, interrupts, where it
        stopped, counters, each device's ``save()``); its devices must be quiet."""
        devices = {type(d).__name__.lower(): d.save() for d in self.devices()}
        return {
            "vm": {
                "id": self.id,
                "image": self.image.name,
                "mem_size": self.mem_size,
                "cmdline": self.cmdline,
                "mac": self.mac,
                "generation": self.generation,
                "clock_ns": self.now_ns(),
                "pending": self._pending,
                "irq_entry": self._irq_entry,
                "idle_arg": self._idle_arg,
                "idle_deadline": self._idle_deadline,
                "on_wake": self._on_wake,
                "stats": dict(self.stats),
                "hypercalls": self.hypercalls,
            },
            "devices": devices,
            "monitors": {},
        }

    def restore_state(
        self,
        meta: dict[str, Any],
        cpu: CpuState,
        origin: SnapshotFile | None,
        clone: bool,
        memory: GuestMemory | None = None,
    ) -> None:
        """Take over a snapshot's state before ``start()`` (the kernel calls this on a VM
        it made from the snapshot's meta). The VM's memory maps ``origin`` copy-on-write
        when it is first admitted. ``clone``: the VM is a new member of the snapshot's
        lineage (its own id, MAC and command line, given at build): its ``generation``
        goes up by one and ``Irq.CLONE`` is raised, and its NIC's queued frames (for the
        old address) are dropped; otherwise it continues as the VM it was. Migrated in:
        no ``origin`` and ``memory`` holds its pages (the VM owns it from here)."""
        vm = meta["vm"]
        if origin is not None:
            self._origin = origin.share()
        self._incoming = memory
        self._cpu_state = cpu
        self._set_clock_offset(int(vm["clock_ns"]) - self._rt.now_ns())
        self._pending = int(vm["pending"]) & abi.IRQ_ALL
        self._irq_entry = int(vm["irq_entry"])
        self._idle_arg = None if vm["idle_arg"] is None else int(vm["idle_arg"])
        self._idle_deadline = int(vm.get("idle_deadline", 0))
        self._on_wake = int(vm.get("on_wake", 0)) & abi.IRQ_ALL
        self._hypercalls = int(vm["hypercalls"])
        self.generation = int(vm["generation"])
        if not clone:
            for key, value in dict(vm["stats"]).items():
                if key in self.stats:
                    self._stats[key] = int(value)
        saved = meta["devices"]
        for dev in self.devices():
            state = saved.get(type(dev).__name__.lower(), {})
            if clone and isinstance(state, dict) and "rx" in state:
                state = {**state, "rx": []}
            dev.restore(state)
        if clone:  # told when it next runs: an idle clone sleeps on until something wakes it
            self.generation += 1
            self._on_wake |= Irq.CLONE

    # ---- live migration (denali.migration) ----
    def _at_boundary(self, work: Callable[[GuestMemory], Any]) -> asyncio.Future[Any]:
        """Run ``work(memory)`` while no slice of this VM runs (a posted completion); its
        result, or None when the VM is not resident or ended."""
        fut: asyncio.Future[Any] = self._rt.loop.create_future()

        def run(mem: GuestMemory | None) -> None:
            if not fut.done():
                fut.set_result(work(mem) if mem is not None else None)

        self.post(run)
        return fut

    async def track_dirty(self) -> bool:
        """Begin dirty-page tracking of this resident VM's memory and keep it resident
        (not swapped out) until ``untrack_dirty``; False when it is not resident."""
        if self._memory is None or self.state.final:
            return False
        self._migrating = True

        def start(mem: GuestMemory) -> bool:
            mem.start_tracking()
            return True

        started = await self._at_boundary(start)
        if not started:
            self._migrating = False
        return bool(started)

    async def take_dirty(self) -> bytearray | None:
        """The pages written since tracking began or the last call (one byte each, the
        register page always among them); None when tracking stopped (the VM ended)."""

        def take(mem: GuestMemory) -> bytearray | None:
            if mem.dirty is None:
                return None
            got = mem.take_dirty()
            got[_VREGS // abi.PAGE_SIZE] = 1
            return got

        result: bytearray | None = await self._at_boundary(take)
        return result

    def untrack_dirty(self) -> None:
        """End tracking (a migration that ended either way); the VM may be swapped again."""
        self._migrating = False
        self._leave_c()
        mem = self._memory
        if mem is not None:
            mem.stop_tracking()

    @property
    def migrating(self) -> bool:
        """True while a migration of this VM is under way (``denali.migration``)."""
        return self._migrating or self._migration_busy

    @migrating.setter
    def migrating(self, value: bool) -> None:
        self._migration_busy = value

    @property
    def memory(self) -> GuestMemory | None:
        """The resident memory (None while swapped out or not yet made); the kernel's."""
        return self._memory

    def hold_paused(self) -> None:
        """Before ``start()``: the VM pauses at its first slice boundary (``resume()``)."""
        if self._pause is None:
            self._pause = _Pause(self._rt.loop)

    def end_migrated(self) -> None:
        """This VM now runs in another kernel: end it here in state MIGRATED."""
        self._final_request = VmState.MIGRATED
        self.kill()

    def devices(self) -> Sequence[Device]:
        """The VM's devices (clock, console, then NIC and disks when it has them)."""
        self._leave_c()  # the clock's deadline is its own again
        return [d for d in self._devices[1:] if isinstance(d, Device)]


class _Pause:
    """A pause asked for: ``reached`` once the VM is PAUSED, ``resumed`` when it may go on."""

    __slots__ = ("before", "reached", "resumed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.reached: asyncio.Future[None] = loop.create_future()
        self.resumed: asyncio.Future[None] = loop.create_future()
        self.before: VmState | None = None

    def end(self) -> None:
        for fut in (self.reached, self.resumed):
            if not fut.done():
                fut.set_result(None)


@dataclass(frozen=True, slots=True)
class VmImage:
    """A paused VM's state for a snapshot: ``meta`` (plain data), its CPU, its memory
    (valid until the VM resumes) and the page runs of it to store."""

    meta: dict[str, Any]
    cpu: CpuState
    memory: mmap.mmap
    runs: array[int]
    scratch: GuestMemory | None = None
    """A copy of a swapped-out VM's memory made for the snapshot: closed by the taker."""


def page_runs(page_map: bytes | bytearray) -> array[int]:
    """(first page, count) runs of the pages whose byte in ``page_map`` is 1."""
    runs = array("I")
    for m in _RUN_OF_ONES.finditer(bytes(page_map)):
        runs.extend((m.start(), m.end() - m.start()))
    return runs


_RUN_OF_ONES: Final = re.compile(b"\x01+")
_BIT0: Final = bytes(i & 1 for i in range(256))
