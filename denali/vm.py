"""A virtual machine: guest memory, a virtual CPU, devices, and the coroutine that runs it.

State machine (``Vm.state``)::

    CREATED -> RUNNABLE <-> RUNNING -> (EXITED | FAULTED | FAILED)
                   ^           |
                   +-- IDLE <--+          any state but the final ones -> KILLED

RUNNABLE: waiting for the CPU. RUNNING: inside a slice. IDLE: in idle-with-timeout
(an event-loop timer and a future; no CPU at all). EXITED: the guest called terminate.
FAULTED: the guest faulted (``Vm.fault`` has the report). FAILED: a kernel bug hit this
VM only. KILLED: the host stopped it (``kill()`` or kernel close).

Batched virtual interrupts: devices and timers OR bits into ``pending`` from the event
loop; nothing runs until the VM's next slice, where the whole set is delivered at once:
either as the return value of the IDLE hypercall, or, when the guest registered an
entry point and its ``irq_enable`` register is 1, through that entry.
"""

from __future__ import annotations

import asyncio
import struct
import time
from concurrent.futures import Executor
from enum import Enum
from typing import TYPE_CHECKING, Final

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.cpu import EXIT, Exit, VCpu, layout_regions
from denali.devices.console import Console, ConsoleSink
from denali.errors import GuestFault, KernelInternalError, VmKilledError
from denali.fault import FaultReport
from denali.hypercalls import IDLE_DEADLINE, IDLE_NOW, IDLE_PENDING
from denali.memory import GuestMemory
from denali.swap import ENGINE_COST, SwapImage

if TYPE_CHECKING:
    from denali.devices.disk.device import VmDisks
    from denali.devices.nic import NicPort
    from denali.kernel import Kernel
    from denali.loader import Image
    from denali.personality import PersonalityState
    from denali.preempt import Lane

_V: Final = abi.VREGS.offsets()
_VREGS: Final = int(abi.Layout.VREGS)
_OFF_TIME: Final = _VREGS + _V["time_ns"]
_OFF_PENDING: Final = _VREGS + _V["pending"]
_OFF_IE: Final = _VREGS + _V["irq_enable"]
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")


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
    """One VM. Created by ``Kernel.spawn``; never construct directly."""

    __slots__ = ("__weakref__", "_done", "_idle_waiters", "_resident", "_swap_out_task",
                 "_swapping_in", "_task", "_timer", "_waker", "cmdline", "console", "cpu", "created_ns",
                 "disks", "ended_ns", "error", "exit_request", "exit_status", "fault", "first_slice_ns",
                 "id", "image", "irq_entry", "kernel", "mac", "mem_size", "memory", "nic", "pending",
                 "pstate", "state", "stats", "swapped")

    def __init__(self, kernel: Kernel, vm_id: int, image: Image, mem_size: int, cmdline: str,
                 console: ConsoleSink | None, mac: bytes | None = None) -> None:
        self.kernel = kernel
        self.id = vm_id
        self.image = image
        self.cmdline = cmdline
        self.state = VmState.CREATED
        self.pending = 0
        self.irq_entry = 0
        self.exit_request: int | None = None
        self.exit_status: int | None = None
        self.fault: FaultReport | None = None
        self.error: BaseException | None = None
        self.console = Console(console)
        self.console.on_input = self._console_input  # input raises Irq.CONSOLE
        self.nic: NicPort | None = None
        self.disks: VmDisks | None = None
        self.stats = {"slices": 0, "cpu_ns": 0, "preemptions": 0, "idles": 0, "irqs_raised": 0,
                      "irq_batches": 0, "irq_bits_delivered": 0}
        """Counters: slices run and the time they took (cpu_ns, guest code and the
        hypercalls handled inside them), preemptions, idles, interrupts raised, batches
        delivered and the bits they carried."""
        self.created_ns = kernel.now_ns()
        self.first_slice_ns: int | None = None
        self.ended_ns: int | None = None
        self._waker: asyncio.Future[None] | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] = kernel.loop.create_future()
        self.mem_size = mem_size
        self.mac = mac or bytes(6)
        self.pstate: PersonalityState | None = None
        """[personality] what SYSCALL_ENTRY, MEM_PROTECT, SET_TLS changed (None: nothing)."""
        self.swapped: SwapImage | None = None
        """Registers and page bitmap while the VM is swapped out; None when resident."""
        self._resident = False
        self._swap_out_task: asyncio.Future[None] | None = None
        self._swapping_in = False
        self.memory: GuestMemory
        self.cpu: VCpu
        # Memory and CPU are made by the coroutine before the first slice, after the
        # gatekeeper (if any) admitted the VM.

    async def _materialize(self, resume: SwapImage | None) -> None:
        """Create guest memory and the CPU: from the image, or from swap for ``resume``
        (pages first: the CPU then writes its kernel page over whatever was stored)."""
        k = self.kernel
        mem = GuestMemory(self.mem_size)
        try:
            regions, heap_start, heap_end = layout_regions(self.image, self.mem_size)
            if self.pstate is not None and self.pstate.regions is not None:
                regions = self.pstate.regions  # [personality] the page map MEM_PROTECT made
            mem.set_regions(regions)
            self.memory = mem
            if resume is not None:
                await k.swapper.read_in(self, resume, mem.buf)
            else:
                for seg in self.image.segments:
                    mem.write(seg.vaddr, seg.data)
                self._init_vregs(heap_start, heap_end, self.mac)
            cpu = VCpu(self.id, self.image, mem, k.hypercalls, self, k.config.tcg_buffer,
                       resume.registers() if resume is not None else None)
            cpu.defer_hypercalls = k.pool is not None
            if resume is not None:
                cpu.hypercalls = resume.hypercalls
            self.cpu = cpu
        except BaseException:
            mem.close()
            raise
        self._resident = True

    def _image_cost(self) -> int:
        return sum(s.page_end - s.page_start for s in self.image.segments) + 4 * abi.PAGE_SIZE + ENGINE_COST

    # ---- swap ----
    def evictable(self) -> bool:
        """True while the VM may be swapped out: idle, resident, no disk I/O in flight."""
        if (self.state is not VmState.IDLE or not self._resident or self._swapping_in
                or self._swap_out_task is not None):
            return False
        return self.disks is None or not any(d.outstanding for d in self.disks.disks)

    async def swap_out(self) -> None:
        """Write the VM's touched pages and registers out and free its engine and memory."""
        if not self.evictable():
            return
        loop = self.kernel.loop
        self._swap_out_task = loop.create_future()
        try:
            image = await self.kernel.swapper.write_out(self)
            if self.state.final:
                return
            self.swapped = image
            self._resident = False
            self.cpu.close()
            self.memory.close()
            del self.cpu, self.memory  # what stays of a swapped VM is small (SwapImage)
            self.kernel.swapper.release(self.id)
        finally:
            done, self._swap_out_task = self._swap_out_task, None
            done.set_result(None)
            if self.state.final and self._resident:  # ended while writing: we close
                self._resident = False
                self.cpu.close()
                self.memory.close()

    async def _ensure_resident(self) -> None:
        """Bring a swapped VM back (waiting for the gatekeeper); no-op when resident."""
        if self._swap_out_task is not None:
            await asyncio.shield(self._swap_out_task)
        image = self.swapped
        if image is None:
            return
        sw = self.kernel.swapper
        await sw.admit(self, image.stored * abi.PAGE_SIZE + ENGINE_COST)
        self._swapping_in = True
        try:
            await self._materialize(image)
        finally:
            self._swapping_in = False
        self.swapped = None

    def _init_vregs(self, heap_start: int, heap_end: int, mac: bytes) -> None:
        k = self.kernel
        cmd = self.cmdline.encode()
        fields = {"magic": abi.VREGS_MAGIC, "abi_version": abi.ABI_VERSION, "vm_id": self.id,
                  "mem_size": self.memory.size, "time_ns": k.now_ns(), "cpu_khz": k.cpu_khz,
                  "pending": 0, "irq_enable": 0, "heap_start": heap_start, "heap_end": heap_end,
                  "cmdline_len": len(cmd), "mac": mac, "_pad0": 0,
                  "slice_ns": k.config.slice_us * 1000, "_pad1": 0}
        abi.VREGS.codec().pack_into(self.memory.buf, _VREGS,
                                    *(fields[f.name] for f in abi.VREGS.fields))
        start = _VREGS + abi.CMDLINE_OFFSET
        self.memory.write(start, cmd + b"\0")

    # ---- host API ----
    def interrupt(self, bits: int = Irq.HOST) -> None:
        """Raise virtual interrupt bits (batched; delivered when the VM next runs)."""
        if self.state.final:
            return
        bits &= abi.IRQ_ALL
        if not bits:
            return
        self.pending |= bits
        self.stats["irqs_raised"] += 1
        w = self._waker
        if w is not None and not w.done():
            w.set_result(None)

    def _console_input(self) -> None:
        self.interrupt(Irq.CONSOLE)

    def raise_net_rx(self) -> None:
        """The NIC's receive callback: frames wait."""
        self.interrupt(Irq.NET_RX)

    def kill(self) -> None:
        """Stop the VM now (it ends in state KILLED); no-op once it has ended."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait(self) -> int:
        """Wait for the VM to end; return the guest's exit status.

        Raises ``GuestFault`` if it faulted, ``VmKilledError`` if the host stopped it,
        ``KernelInternalError`` if a kernel bug stopped it.
        """
        await asyncio.shield(self._done)
        if self.state is VmState.EXITED:
            assert self.exit_status is not None
            return self.exit_status
        if self.state is VmState.FAULTED:
            assert self.fault is not None
            raise GuestFault(self.fault)
        if self.state is VmState.FAILED:
            raise KernelInternalError(f"VM {self.id}: kernel error: {self.error!r}") from self.error
        raise VmKilledError(f"VM {self.id} was stopped by the host")

    @property
    def hypercalls(self) -> int:
        """Hypercalls this VM has made (kept across swap-outs)."""
        if self.swapped is not None:
            return self.swapped.hypercalls
        return self.cpu.hypercalls if self._resident else 0

    async def until_idle(self) -> None:
        """Wait until the VM next enters idle-with-timeout (returns at once if it is idle).

        Raises like ``wait()`` if the VM ends first.
        """
        if self.state is VmState.IDLE:
            return
        fut: asyncio.Future[None] = self.kernel.loop.create_future()
        self._idle_waiters.append(fut)
        await asyncio.wait({fut, self._done}, return_when=asyncio.FIRST_COMPLETED)
        if not fut.done():
            fut.cancel()
            await self.wait()
            raise VmKilledError(f"VM {self.id} ended without idling")

    @property
    def done(self) -> bool:
        return self._done.done()

    # ---- kernel side ----
    def start(self) -> None:
        self._task = self.kernel.loop.create_task(self._main(), name=f"denali-vm-{self.id}")
        # A task cancelled before its first step never runs _main's cleanup: do it here.
        self._task.add_done_callback(lambda _t: self._finish(VmState.KILLED))

    def set_timer(self, deadline_ns: int) -> None:
        """Arm (or with 0 disarm) the one-shot timer that raises Irq.TIMER."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline_ns:
            self._timer = self.kernel.call_at_ns(deadline_ns, self.interrupt, Irq.TIMER)

    def _before_slice(self) -> bool:
        """Refresh the virtual registers and deliver pending interrupts; False on fault."""
        buf = self.memory.buf
        _U64.pack_into(buf, _OFF_TIME, self.kernel.now_ns())
        pending = self.pending
        _U32.pack_into(buf, _OFF_PENDING, pending)
        if pending and self.irq_entry and _U32.unpack_from(buf, _OFF_IE)[0] == 1:
            self.pending = 0
            _U32.pack_into(buf, _OFF_PENDING, 0)
            _U32.pack_into(buf, _OFF_IE, 0)
            self.stats["irq_batches"] += 1
            self.stats["irq_bits_delivered"] += bin(pending).count("1")
            if not self.cpu.deliver_irq(self.irq_entry, pending):
                return False
        return True

    async def _idle(self, arg: int) -> bool:
        """Complete an IDLE hypercall whose struct is at ``arg`` (checked at dispatch)."""
        k = self.kernel
        buf = self.memory.buf
        deadline = _U64.unpack_from(buf, arg + IDLE_DEADLINE)[0]
        if not self.pending and (deadline == 0 or deadline > k.now_ns()):
            self.state = VmState.IDLE
            self.stats["idles"] += 1
            if self._idle_waiters:
                for w in self._idle_waiters:
                    if not w.done():
                        w.set_result(None)
                self._idle_waiters.clear()
            fut: asyncio.Future[None] = k.loop.create_future()
            self._waker = fut
            handle = k.call_at_ns(deadline, _wake, fut) if deadline else None
            k.swapper.vm_idle(self)
            try:
                await fut
            finally:
                self._waker = None
                k.swapper.vm_busy(self)
                if handle is not None:
                    handle.cancel()
            await self._ensure_resident()
            buf = self.memory.buf
            waited = True
        else:
            waited = False
        mask = self.pending
        self.pending = 0
        if mask:
            self.stats["irq_batches"] += 1
            self.stats["irq_bits_delivered"] += bin(mask).count("1")
        _U64.pack_into(buf, arg + IDLE_NOW, k.now_ns())
        _U32.pack_into(buf, arg + IDLE_PENDING, mask)
        self.cpu.set_result(Result.OK)
        return waited

    async def _main(self) -> None:
        k = self.kernel
        arb = k.arbiter
        pool = k.pool
        slice_ns = k.config.slice_us * 1000
        stats = self.stats
        idled = False
        final = VmState.KILLED
        # INVARIANT: every slice ends in a suspension (a preempted VM and a yield sleep(0),
        # an idle VM waits), so the loop gets control at least once per slice even when
        # the CPU is uncontended.
        try:
            if not self._resident:  # the gatekeeper admits fresh VMs in FIFO order
                await k.swapper.admit(self, self._image_cost())
                await self._materialize(None)
            while True:
                self.state = VmState.RUNNABLE
                lane, _ = await arb.acquire(self.id, idled)
                try:
                    self.state = VmState.RUNNING
                    if not self._before_slice():
                        self.fault = self.cpu.fault
                        final = VmState.FAULTED
                        return
                    if self.first_slice_ns is None:
                        self.first_slice_ns = k.now_ns()
                    stats["slices"] += 1
                    began = time.monotonic_ns()
                    deadline = began + slice_ns
                    if pool is None:
                        reason = self.cpu.run(lane, deadline)
                    else:
                        reason = await self._run_on_worker(pool, lane, deadline)
                    stats["cpu_ns"] += time.monotonic_ns() - began
                finally:
                    arb.release(lane)
                idled = False
                if reason is Exit.PREEMPTED:
                    stats["preemptions"] += 1
                    await asyncio.sleep(0)
                elif reason is Exit.HYPERCALL:
                    if self.cpu.deferred and not self._dispatch_deferred():
                        continue
                    if self.cpu.hcall_nr == Hc.TERMINATE:
                        self.exit_status = self.exit_request
                        final = VmState.EXITED
                        return
                    # INVARIANT: only TERMINATE and IDLE handlers return EXIT.
                    idled = await self._idle(self.cpu.hcall_arg)
                    if not idled:  # a yield: let every other runnable VM queue up first
                        await asyncio.sleep(0)
                elif reason is Exit.FAULT:
                    self.fault = self.cpu.fault
                    final = VmState.FAULTED
                    return
                else:
                    self.error = self.cpu.error
                    final = VmState.FAILED
                    return
        except asyncio.CancelledError:
            final = VmState.KILLED
        except Exception as exc:  # a kernel bug: fail this VM, keep the others
            self.error = exc
            final = VmState.FAILED
        finally:
            self._finish(final)

    async def _run_on_worker(self, pool: Executor, lane: Lane, deadline: int) -> Exit:
        """One slice on a worker thread. If the VM is killed meanwhile, the slice is
        stopped and waited for: the engine must not be freed while it runs."""
        fut = self.kernel.loop.run_in_executor(pool, self.cpu.run, lane, deadline)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # INVARIANT: the engine is not freed while a worker runs it, even if this
            # task is cancelled again while it waits.
            while not fut.done():
                self.cpu.engine.stop()
                try:
                    await asyncio.wait({fut}, timeout=0.001)
                except asyncio.CancelledError:
                    pass
            raise

    def _dispatch_deferred(self) -> bool:
        """Handle, on the loop, a hypercall the CPU deferred (worker-thread slices).

        Returns True when the hypercall must still be completed by the coroutine
        (its handler said EXIT), False when it is done.
        """
        cpu = self.cpu
        res = self.kernel.hypercalls.dispatch(self, cpu.hcall_nr, cpu.hcall_arg)
        if res == EXIT:
            return True
        cpu.set_result(res)
        return False

    def _finish(self, final: VmState) -> None:
        if self._done.done():
            return
        self.ended_ns = self.kernel.now_ns()
        self.state = final
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.console.close()
        if self._swap_out_task is None and self._resident:
            self.cpu.close()
            self.memory.close()
        self.kernel.swapper.remove_area(self.id)
        self.kernel.vm_ended(self)
        if not self._done.done():
            self._done.set_result(None)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
