"""A virtual machine: its state machine, the coroutine that runs its slices, its interrupts.

State machine (``Vm.state``)::

    CREATED -> RUNNABLE <-> RUNNING -> (EXITED | FAULTED | FAILED)
                   ^           |
                   +-- IDLE <--+          any state but the final ones -> KILLED

RUNNABLE: waiting for the CPU. RUNNING: inside a slice. IDLE: in idle-with-timeout
(a timer and a future; no CPU at all). EXITED: the guest called terminate. FAULTED: the
guest faulted (``Vm.fault`` has the report). FAILED: a kernel bug, or its swap file
going bad, hit this VM only. KILLED: the host stopped it (``kill()`` or kernel close).

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
import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Final

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.cpu import EXIT, CpuState, Exit, SyscallRoute, VCpu, layout_regions
from denali.devices.base import SLOT_VM, Completion, Device
from denali.devices.clock import Clock
from denali.devices.console import Console
from denali.errors import DiskError, GuestFault, KernelInternalError, SwapError, VmKilledError
from denali.fault import FaultReport
from denali.memory import PROT_R, PROT_RW, PROT_RX, PROT_X, GuestMemory, Region
from denali.swap import ENGINE_COST, SwapImage, touched_bytes
from denali.timers import Timer

if TYPE_CHECKING:
    from denali.devices.disk.device import Disks
    from denali.devices.nic import Nic, NicPort
    from denali.devices.personality import Personality
    from denali.loader import Image
    from denali.preempt import Lane
    from denali.runtime import Runtime

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
    EXITED = "exited"
    FAULTED = "faulted"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def final(self) -> bool:
        return self in (VmState.EXITED, VmState.FAULTED, VmState.FAILED, VmState.KILLED)


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
        "_clock_offset",
        "_clock_zero",
        "_cpu",
        "_cpu_state",
        "_devices",
        "_dispatch",
        "_done",
        "_evicting",
        "_exit_request",
        "_hypercalls",
        "_idle_waiters",
        "_in_slice",
        "_irq_entry",
        "_memory",
        "_on_end",
        "_page_map",
        "_pending",
        "_posted",
        "_route",
        "_rt",
        "_swapped",
        "_swapping_in",
        "_syscalls",
        "_task",
        "_vregs_head",
        "_vregs_tail",
        "_waker",
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
        "id",
        "image",
        "interposed",
        "mem_size",
        "nic_device",
        "state",
        "stats",
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
    ) -> None:
        """``on_end(vm)`` is called as the VM ends (the kernel unpublishes it)."""
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
        self._devices: list[object | None] = [self, clock, console, nic, disks, personality]
        self.interposed: frozenset[str] = frozenset()
        """The event kinds (``INTERPOSABLE``) some monitor interposes on. Empty: every
        event takes the kernel's direct path, at its direct cost (and the native fast
        path, where there is one); a kind in the set takes the path that calls the
        monitors. Changed only by the monitor layer."""
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
        self.stats = {
            "slices": 0,
            "cpu_ns": 0,
            "preemptions": 0,
            "idles": 0,
            "irqs_raised": 0,
            "irq_batches": 0,
            "irq_bits_delivered": 0,
        }
        """Counters: slices run and the time they took (cpu_ns, guest code and the
        hypercalls handled inside them), preemptions, idles, interrupts raised, batches
        delivered and the bits they carried."""
        self.created_ns = rt.now_ns()
        self.first_slice_ns: int | None = None
        self.ended_ns: int | None = None
        self._clock_offset = 0
        """VM clock - kernel clock (0 unless restored from a snapshot)."""
        self._clock_zero = rt.epoch_ns
        """``time.monotonic_ns()`` when the VM's clock read 0 (epoch - offset)."""
        self._waker: asyncio.Future[None] | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] = rt.loop.create_future()
        self._posted: deque[Completion] = deque()
        self._in_slice = False
        self._hypercalls = 0
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
    def syscalls(self) -> int:
        """Foreign system calls the VM's CPU routed to its SYSCALL_ENTRY (kept across
        swap-outs; 0 for a guest that never registered one)."""
        return self._syscalls + (self._cpu.syscalls if self._cpu is not None else 0)

    @property
    def done(self) -> bool:
        return self._done.done()

    def interrupt(self, bits: int = Irq.HOST) -> None:
        """Raise virtual interrupt bits (batched; delivered when the VM next runs)."""
        if self.state.final:
            return
        bits &= abi.IRQ_ALL
        if not bits:
            return
        self._pending |= bits
        self.stats["irqs_raised"] += 1
        w = self._waker
        if w is not None and not w.done():
            w.set_result(None)

    def kill(self) -> None:
        """Stop the VM now (it ends in state KILLED); no-op once it has ended."""
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
        raise VmKilledError(f"VM {self.id} was stopped by the host")

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

    def call_at(self, deadline_ns: int, callback: Callable[..., Any], *args: Any) -> Timer:
        return self._rt.timers.add(deadline_ns - self._clock_offset, callback, *args)

    def post(self, completion: Completion) -> None:
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
        mem = GuestMemory(self.mem_size)
        try:
            regions, heap_start, heap_end = layout_regions(self.image, self.mem_size)
            if self._page_map is not None:  # swapped in: the map as it was
                regions = list(self._page_map)
            mem.set_regions(regions)
            if self._swapped is not None:
                assert rt.store is not None
                await rt.store.read(self.id, self._swapped, mem.buf)
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
                rt.table.dispatcher(self._devices, mem),
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
        self._write_vregs()
        self._apply_posted()

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
            "_pad1": 0,
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
        self._cpu = self._memory = self._dispatch = None
        if cpu is not None:
            self._hypercalls += cpu.hypercalls
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
        if not self.evictable() or rt.store is None or rt.gate is None:
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
        if image is None:
            return
        rt = self._rt
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
                _U32.pack_into(buf, _OFF_IE, 0)
                self.stats["irq_batches"] += 1
                self.stats["irq_bits_delivered"] += pending.bit_count()
                if not self._cpu.deliver_irq(self._irq_entry, pending):
                    return False
        return True

    async def _idle(self, arg: int) -> bool:
        """Complete an IDLE hypercall whose struct is at ``arg`` (checked at dispatch);
        True if the VM waited."""
        rt = self._rt
        assert self._memory is not None
        deadline = _U64.unpack_from(self._memory.buf, arg + _IDLE["deadline_ns"])[0]
        waited = False
        if not self._pending and (deadline == 0 or deadline > self.now_ns()):
            self.state = VmState.IDLE
            self.stats["idles"] += 1
            if self._idle_waiters:
                for w in self._idle_waiters:
                    if not w.done():
                        w.set_result(None)
                self._idle_waiters.clear()
            fut: asyncio.Future[None] = rt.loop.create_future()
            self._waker = fut
            timer = self.call_at(deadline, _wake, fut) if deadline else None
            if rt.gate is not None:
                rt.gate.vm_idle(self)
            try:
                await fut
            finally:
                self._waker = None
                if rt.gate is not None:
                    rt.gate.vm_busy(self.id)
                if timer is not None:
                    timer.cancel()
            await self._ensure_resident()
            waited = True
        self._apply_posted()
        mem = self._memory
        cpu = self._cpu
        assert mem is not None and cpu is not None
        mask = self._pending
        self._pending = 0
        if mask:
            self.stats["irq_batches"] += 1
            self.stats["irq_bits_delivered"] += mask.bit_count()
        _U64.pack_into(mem.buf, arg + _IDLE["now_ns"], self.now_ns())
        _U32.pack_into(mem.buf, arg + _IDLE["pending"], mask)
        cpu.set_result(Result.OK)
        return waited

    async def _main(self) -> None:
        rt = self._rt
        arb = rt.arbiter
        pool = rt.pool
        slice_ns = rt.slice_ns
        stats = self.stats
        idled = False
        final = VmState.KILLED
        # INVARIANT: every slice ends in a suspension (a preempted VM and a yield sleep(0),
        # an idle VM waits), so the loop gets control at least once per slice even when
        # the CPU is uncontended.
        try:
            if self._memory is None:  # the gatekeeper admits fresh VMs in FIFO order
                if rt.gate is not None:
                    await rt.gate.admit(self.id, self._image_cost())
                await self._materialize()
            while True:
                self.state = VmState.RUNNABLE
                lane, _ = await arb.acquire(self.id, idled)
                try:
                    self.state = VmState.RUNNING
                    cpu = self._cpu
                    assert cpu is not None
                    if not self._before_slice():
                        self.fault = cpu.fault
                        final = VmState.FAULTED
                        return
                    if self.first_slice_ns is None:
                        self.first_slice_ns = rt.now_ns()
                    stats["slices"] += 1
                    began = time.monotonic_ns()
                    deadline = began + slice_ns
                    if pool is None:
                        reason = cpu.run(lane, deadline)
                    else:
                        reason = await self._run_on_worker(pool, cpu, lane, deadline)
                    stats["cpu_ns"] += time.monotonic_ns() - began
                finally:
                    arb.release(lane)
                idled = False
                if reason is Exit.PREEMPTED:
                    stats["preemptions"] += 1
                    await asyncio.sleep(0)
                elif reason is Exit.HYPERCALL:
                    if cpu.deferred and not self._dispatch_deferred(cpu):
                        continue
                    if cpu.hcall_nr == Hc.TERMINATE:
                        self.exit_status = self._exit_request
                        final = VmState.EXITED
                        return
                    # INVARIANT: only TERMINATE and IDLE handlers return EXIT.
                    idled = await self._idle(cpu.hcall_arg)
                    if not idled:  # a yield: let every other runnable VM queue up first
                        await asyncio.sleep(0)
                elif reason is Exit.FAULT:
                    self.fault = cpu.fault
                    final = VmState.FAULTED
                    return
                else:
                    self.error = cpu.error
                    log.error(
                        "VM %d: kernel error in a hypercall; this VM is stopped", self.id, exc_info=cpu.error
                    )
                    final = VmState.FAILED
                    return
        except asyncio.CancelledError:
            final = VmState.KILLED
        except SwapError as exc:
            self.error = exc
            log.error("VM %d stopped: %s", self.id, exc)
            final = VmState.FAILED
        except Exception as exc:  # a kernel bug: fail this VM, keep the others
            self.error = exc
            log.error("VM %d: kernel error; this VM is stopped", self.id, exc_info=exc)
            final = VmState.FAILED
        finally:
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
        return False

    def _finish(self, final: VmState) -> None:
        if self.state.final:
            return
        rt = self._rt
        self.ended_ns = rt.now_ns()
        self.state = final
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
            self._on_end(self)
            rt.owner.spawn(self._close_devices(), name=f"denali-vm-{self.id}-close")

    async def _close_devices(self) -> None:
        """Close every device (disks write their overlays' bitmaps), then mark the VM done."""
        try:
            for dev in self._devices[1:]:
                if isinstance(dev, Device):
                    await dev.aclose()
            if self.disks is not None:
                self.close_errors.extend(self.disks.close_errors)
        finally:
            if not self._done.done():
                self._done.set_result(None)

    def devices(self) -> Sequence[Device]:
        """The VM's devices (clock, console, then NIC and disks when it has them)."""
        return [d for d in self._devices[1:] if isinstance(d, Device)]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
