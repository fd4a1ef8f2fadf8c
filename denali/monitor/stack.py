"""The monitors of one VM, in order, and the machinery that passes events through them.

``MonitorStack`` is the VM's ``denali.interpose.Interposer``: the only writer of
``Vm.interposed`` (the union of its monitors' kinds), of the NIC's and disks' filters,
and of the CPU's dispatch function. A stack with no monitor interposes on nothing, so
its VM runs exactly as one without a stack.

Order: ``monitors[0]`` is nearest the VM. Events going down (hypercalls, faults,
frames sent, disk requests) meet ``monitors[0]`` first; results and events coming up
(a hypercall's result, interrupts, frames received) meet the last one first.

Changing the stack (``push``/``pop``/``insert``/``remove``) takes effect at once, on
the loop, for every event after it; an event already on its way (a delayed hypercall)
finishes through the monitors it started with.

Holding (``hold``/``release``/``step``): a monitor may hold its VM before its next
instruction: the VM's coroutine waits (``gate``) while others run; ``hold`` returns
once the VM is held (or idle, or ended). A held VM's registers and memory are open to
its monitors through the checked accessors below (a debugger's view); memory is only
what the guest's page map allows, and never the kernel page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from denali import abi
from denali.abi import Hc
from denali.cpu import EXIT, CpuState, Dispatch, VCpu
from denali.errors import ConfigError
from denali.interpose import Outcome
from denali.memory import PROT_R, PROT_RW, PROT_W, PROT_X, GuestMemory
from denali.monitor.base import (
    Answer,
    Delay,
    FaultEvent,
    HypercallEvent,
    Monitor,
    Resume,
    State,
    Stop,
)
from denali.vm import INTERPOSABLE, Vm, VmState

if TYPE_CHECKING:
    from denali.devices.disk.device import DiskRequest

log = logging.getLogger(__name__)

_Held = tuple[HypercallEvent, tuple[Monitor, ...], int, "Delay | None"]
_KNOWN: Final = tuple(sorted(abi.HYPERCALL_BY_NR))
_LOGGED_CALLS: Final = (int(Hc.NET_SEND), int(Hc.TIMER_SET), int(Hc.IDLE))
"""The calls the native path can record for recording monitors: NET_SEND and TIMER_SET
logged by the CPU's hook (``_preempt.c``, 10.), IDLE reported by the VM once it returns
(``record_call``)."""


class MonitorStack:
    """The monitor stack of one VM (see the module docstring). Use ``MonitorStack.of(vm)``."""

    def __init__(self, vm: Vm, totals: dict[str, int] | None = None) -> None:
        self.vm = vm
        self._monitors: list[Monitor] = []
        self._totals = totals if totals is not None else {}
        self.counters: dict[str, int] = {}
        """Counters of this VM's monitors ("policy_violations", ...), also added to the
        kernel's totals (``Kernel.stats()["monitors"]``)."""
        # Interposer state
        self.exited = False
        self.gating = False
        self.exit_status = 0
        self.idled = False
        self._base: Dispatch | None = None
        self._memory: GuestMemory | None = None
        self._held: _Held | None = None
        self._stopping: str | None = None
        # chains, rebuilt by _rewire
        self._hc: dict[int, tuple[Monitor, ...]] = {}
        self._hc_other: tuple[Monitor, ...] = ()
        self._irq: tuple[Monitor, ...] = ()
        self._fault: tuple[Monitor, ...] = ()
        self._tx: tuple[Monitor, ...] = ()
        self._rx: tuple[Monitor, ...] = ()
        self._disk: tuple[Monitor, ...] = ()
        self._clock_log = False
        """Every monitor on CLOCK's chain only records it: the CPU may answer it natively
        and log the values (``records_clock``, ``flush_records``)."""
        self._call_log: frozenset[int] = frozenset()
        """Of NET_SEND, TIMER_SET and IDLE, those whose chain only records them (``records_calls``)."""
        self._logging = False
        # holding
        self._holders: set[object] = set()
        self._steps = 0
        self._at_gate = False
        self._release = asyncio.Event()
        self._held_waiters: list[asyncio.Future[None]] = []
        self._pinned = False

    @classmethod
    def of(cls, vm: Vm, totals: dict[str, int] | None = None) -> MonitorStack:
        """The stack of ``vm``, made (empty) and installed if it has none."""
        ip = vm._interposer
        if isinstance(ip, MonitorStack):
            return ip
        if ip is not None:
            raise ConfigError(f"VM {vm.id} has an interposer that is not a monitor stack")
        stack = cls(vm, totals)
        vm.set_interposer(stack)
        return stack

    # ---- the stack ----
    @property
    def monitors(self) -> tuple[Monitor, ...]:
        """The monitors, nearest the VM first."""
        return tuple(self._monitors)

    def push(self, monitor: Monitor) -> None:
        """Add ``monitor`` nearest the VM."""
        self.insert(0, monitor)

    def pop(self) -> Monitor:
        """Remove and return the monitor nearest the VM (``IndexError`` when empty)."""
        if not self._monitors:
            raise IndexError("the monitor stack is empty")
        m = self._monitors[0]
        self.remove(m)
        return m

    def insert(self, index: int, monitor: Monitor) -> None:
        """Add ``monitor`` at ``index`` (0: nearest the VM; len: nearest the kernel)."""
        if monitor in self._monitors:
            raise ConfigError(f"monitor {monitor.name} is already on VM {self.vm.id}'s stack")
        if monitor.stack is not None:
            raise ConfigError(f"monitor {monitor.name} is already attached to another VM")
        unknown = monitor.kinds - INTERPOSABLE
        if unknown:
            raise ConfigError(f"monitor {monitor.name}: unknown event kinds {sorted(unknown)}")
        monitor.attached(self)
        self._monitors.insert(index, monitor)
        self._rewire()

    def remove(self, monitor: Monitor) -> None:
        """Take ``monitor`` off the stack (it releases any hold it had)."""
        self._monitors.remove(monitor)
        self.release(monitor)
        self._rewire()
        monitor.detached()

    def _rewire(self) -> None:
        """Recompute the chains, ``Vm.interposed``, the device filters and the dispatch."""
        self.flush_records()  # to the monitors that saw those calls, before the chains change
        ms = self._monitors
        kinds: set[str] = set()
        for m in ms:
            kinds |= m.kinds
        vm = self.vm
        vm.interposed = frozenset(kinds)
        hc = [m for m in ms if "hypercall" in m.kinds]
        self._hc = {nr: tuple(m for m in hc if m.hypercalls is None or nr in m.hypercalls) for nr in _KNOWN}
        self._hc_other = tuple(m for m in hc if m.hypercalls is None)
        self._irq = tuple(m for m in reversed(ms) if "interrupt" in m.kinds)
        self._fault = tuple(m for m in ms if "fault" in m.kinds)
        self._tx = tuple(m for m in ms if "frame_out" in m.kinds)
        self._rx = tuple(m for m in reversed(ms) if "frame_in" in m.kinds)
        self._disk = tuple(m for m in ms if "disk" in m.kinds)
        clock = self._hc[Hc.CLOCK]
        self._clock_log = bool(clock) and all(m.records_clock for m in clock)
        self._call_log = frozenset(
            nr for nr in _LOGGED_CALLS if self._hc[nr] and all(m.records_calls for m in self._hc[nr])
        )
        self._logging = self._clock_log or bool(self._call_log)
        nic = vm.nic_device
        if nic is not None:
            nic.tx_filter = self._filter_tx if self._tx else None
            nic.rx_filter = self._filter_rx if self._rx else None
        if vm.disks is not None:
            vm.disks.request_filter = self._filter_disk if self._disk else None
        vm.rewire()

    # ---- control ----
    def stop(self, reason: str) -> None:
        """Stop the VM now: it ends KILLED and ``Vm.wait`` says ``reason``. From inside a
        hook the slice stops at once (no more guest instructions run)."""
        vm = self.vm
        if vm.state.final or self._stopping is not None:
            return
        self._stopping = reason
        vm.stopped_by = reason
        cpu = vm._cpu
        if cpu is not None and vm.state is VmState.RUNNING:
            cpu.engine.stop()
        vm.kill()

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` of this VM and of the kernel."""
        self.counters[key] = self.counters.get(key, 0) + n
        self._totals[key] = self._totals.get(key, 0) + n

    def stats(self) -> dict[str, Any]:
        """Plain data for ``Kernel.vm_stats``: the monitors, the kinds interposed on, counters."""
        return {
            "stack": [m.name for m in self._monitors],
            "interposed": sorted(self.vm.interposed),
            "held": self._at_gate,
            **self.counters,
        }

    # ---- state (snapshots) ----
    def save(self) -> list[State]:
        """Each monitor's state, nearest the VM first, as plain data
        (``[{"monitor": class name, "state": ...}]``); take it while the VM is held."""
        self.flush_records()
        return [{"monitor": type(m).__qualname__, "state": m.save()} for m in self._monitors]

    def restore(self, saved: Sequence[State]) -> None:
        """Give each monitor its saved state; ``ConfigError`` unless the stack holds
        monitors of the same classes in the same order (build it first, then restore)."""
        names = [type(m).__qualname__ for m in self._monitors]
        if names != [s.get("monitor") for s in saved]:
            raise ConfigError(
                f"saved monitor stack {[s.get('monitor') for s in saved]} does not match this VM's {names}"
            )
        for m, s in zip(self._monitors, saved, strict=True):
            m.restore(s.get("state", {}))

    # ---- holding ----
    @property
    def held(self) -> bool:
        """True while the VM waits at the gate, or idles pinned, for its holders."""
        return bool(self._holders) and (self._at_gate or self._pinned)

    async def hold(self, owner: object) -> None:
        """Hold the VM before its next instruction; return once it is held (or idle, or
        ended). Idle VMs stay idle: their IDLE returns only after every release."""
        self.hold_nowait(owner)
        await self.until_held()

    def hold_nowait(self, owner: object) -> None:
        """Ask for the VM to be held (``until_held`` says when it is); before the VM
        starts, this holds it before its first instruction."""
        self._holders.add(owner)
        self.gating = True

    async def until_held(self) -> None:
        """Return once the VM is held (or idle and pinned, or ended)."""
        vm = self.vm
        while self._holders and not vm.done and not vm.state.final:
            if self._at_gate or self._pinned:
                return
            if vm.state is VmState.IDLE and vm._waker is not None:
                self._pin()
                return
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._held_waiters.append(fut)
            idle = asyncio.ensure_future(vm.until_idle())
            try:
                await asyncio.wait({fut, idle}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
                await asyncio.gather(idle, return_exceptions=True)
                if fut in self._held_waiters:
                    self._held_waiters.remove(fut)

    def release(self, owner: object) -> None:
        """``owner`` no longer holds the VM; it runs once no monitor holds it."""
        self._holders.discard(owner)
        if not self._holders:
            self.gating = False
            self._at_gate = False
            self._unpin()
            self._release.set()

    def step(self, owner: object) -> None:
        """Let a held VM run one instruction, then hold it again (``until_held``)."""
        if owner in self._holders:
            self._steps = 1
            self._at_gate = False
            self._unpin()
            self._release.set()

    def _pin(self) -> None:
        """Keep a held idle VM resident (the gatekeeper may not swap it out)."""
        gate = self.vm._rt.gate
        if gate is not None:
            gate.vm_busy(self.vm.id)
        self._pinned = True

    def _unpin(self) -> None:
        if not self._pinned:
            return
        self._pinned = False
        vm = self.vm
        gate = vm._rt.gate
        if gate is not None and vm.state is VmState.IDLE and vm._waker is not None and not vm.swapped:
            gate.vm_idle(vm)

    def _notify_held(self) -> None:
        for fut in self._held_waiters:
            if not fut.done():
                fut.set_result(None)
        self._held_waiters.clear()

    async def gate(self) -> None:
        """The VM waits here while a monitor holds it (see ``denali.interpose``)."""
        try:
            while self._holders and not self._steps:
                self._release.clear()
                self._at_gate = True
                self._notify_held()
                await self._release.wait()
        finally:
            self._at_gate = False
        if self._steps:
            self._steps = 0
            cpu = self.vm._cpu
            if cpu is not None:
                cpu.count = 1
        self.gating = bool(self._holders)

    # ---- a held VM's state (a debugger's view) ----
    def cpu_state(self) -> CpuState:
        """The VM's CPU state (the saved one when it is swapped out)."""
        cpu = self.vm._cpu
        return cpu.save() if cpu is not None else self.vm._cpu_state

    def set_registers(self, regs: dict[str, int]) -> bool:
        """Write general registers/EIP/EFLAGS of a resident VM between its slices (held, or
        from a fault hook; ``VCpu.set_registers``)."""
        cpu = self.vm._cpu
        if cpu is None or self.vm._in_slice:
            return False
        cpu.set_registers(regs)
        return True

    def set_fpu(self, fpu: bytes) -> bool:
        """Write the x87/SSE state of a resident VM (``_uc.Engine.write_fpu`` layout)."""
        cpu = self.vm._cpu
        if cpu is None or self.vm._in_slice:
            return False
        try:
            cpu.engine.write_fpu(fpu)
        except ValueError:
            return False
        return True

    def read_memory(self, addr: int, length: int) -> bytes | None:
        """Guest memory the guest may read, or None (not resident, or not readable)."""
        mem = self.vm._memory
        if mem is None or length < 0 or not mem.check(addr, length, PROT_R):
            return None
        return mem.read(addr, length)

    def write_memory(self, addr: int, data: bytes) -> bool:
        """Write guest memory on pages the guest may write, or on its code pages (a
        debugger patches code: their translations are dropped); never the kernel page
        or the kernel fields of the register page. False when refused."""
        mem, cpu = self.vm._memory, self.vm._cpu
        n = len(data)
        if mem is None or cpu is None or not n:
            return mem is not None and not n
        if mem.check(addr, n, PROT_RW):
            mem.write(addr, data)
            return True
        if not mem.check(addr, n, PROT_R):
            return False
        for page in range(addr // abi.PAGE_SIZE, (addr + n - 1) // abi.PAGE_SIZE + 1):
            at = page * abi.PAGE_SIZE
            prot = mem.prot_at(at)
            if not (prot & PROT_W or prot & PROT_X) or at == abi.Layout.KERNEL_PAGE:
                return False
        mem.write(addr, data)
        cpu.engine.invalidate_code(addr, addr + n)
        return True

    # ---- Interposer: hypercalls ----
    def wrap(self, dispatch: Dispatch, memory: GuestMemory) -> Dispatch:
        self._base = dispatch
        self._memory = memory
        return self._dispatch if "hypercall" in self.vm.interposed else dispatch

    def interposes_on(self, nr: int) -> bool:
        return bool(self._hc.get(nr, self._hc_other))

    def records(self, nr: int) -> bool:
        return self._clock_log if nr == Hc.CLOCK else nr in self._call_log

    def flush_records(self) -> None:
        """Hand what the CPU logged natively to the monitors on the calls' chains, in the
        order of the calls: the CLOCK values (``clocks_read``) and the NET_SEND and
        TIMER_SET records (``calls_read``) between them."""
        if not self._logging:
            return
        cpu = self.vm._cpu
        if cpu is None:
            return
        values, calls = cpu.take_logs()
        pos = 0
        for nr, clock_pos, t, before, after in calls:
            if clock_pos > pos:
                self._clocks_read(values[pos:clock_pos])
                pos = clock_pos
            rec = ((nr, t, before, after),)
            for m in self._hc[nr]:
                m.calls_read(rec)
        if pos < len(values):
            self._clocks_read(values[pos:] if pos else values)

    def record_call(self, nr: int, before: bytes, after: bytes) -> None:
        """A call the native path took and the VM completed (IDLE, once it returns OK):
        to the monitors on its chain, after what the CPU logged before it."""
        self.flush_records()
        rec = ((nr, self.vm.now_ns(), before, after),)
        for m in self._hc[nr]:
            m.calls_read(rec)

    def _clocks_read(self, values: list[int]) -> None:
        for m in self._hc[Hc.CLOCK]:
            m.clocks_read(values)

    def _dispatch(self, nr: int, arg: int) -> int:
        if self._logging:
            self.flush_records()
        chain = self._hc.get(nr, self._hc_other)
        base = self._base
        assert base is not None and self._memory is not None
        if not chain:
            return base(nr, arg)
        call = HypercallEvent(self.vm.id, self._memory, nr, arg)
        for m in chain:  # the index only when a monitor stops the call (a stack holds each once)
            v = m.hypercall(call)
            if v is not None:
                return self._verdict(call, chain, chain.index(m), v)
        res = base(call.nr, call.arg)
        if res == EXIT:  # TERMINATE or IDLE: the VM coroutine completes it
            return self._exit((call, chain, len(chain), None))
        for m in reversed(chain):  # _done's walk, inline: this is the path of every call
            res = m.hypercall_done(call, res)
        return res & 0xFFFFFFFF

    def _verdict(self, call: HypercallEvent, chain: tuple[Monitor, ...], i: int, v: object) -> int:
        """Monitor ``i`` of ``chain`` did not pass ``call`` on: answer, delay or stop it."""
        if isinstance(v, Answer):
            return self._answer(call, chain, i, v)
        if isinstance(v, Delay):
            return self._exit((call, chain, i, v))
        if isinstance(v, Stop):
            self._mark_stop(v.reason, chain[i])
            return self._exit((call, chain, i, None))
        raise TypeError(f"monitor {chain[i].name} returned {v!r} for a hypercall")

    def _exit(self, held: _Held) -> int:
        self._held = held
        self.exited = True
        return EXIT

    def _answer(self, call: HypercallEvent, chain: tuple[Monitor, ...], i: int, v: Answer) -> int:
        res = v.result
        if v.out and not call._write_fields(v.out):
            log.warning(
                "VM %d: monitor %s answered %s with out fields that do not fit; the guest gets FAULT",
                self.vm.id,
                chain[i].name,
                call.name,
            )
            res = abi.Result.FAULT
        return self._done(call, chain, i, res)

    @staticmethod
    def _done(call: HypercallEvent, chain: tuple[Monitor, ...], upto: int, res: int) -> int:
        for m in reversed(chain[:upto]):
            res = m.hypercall_done(call, res)
        return res & 0xFFFFFFFF

    def _mark_stop(self, reason: str, by: Monitor) -> None:
        if self._stopping is None:
            self._stopping = reason
            self.vm.stopped_by = f"monitor {by.name}: {reason}"

    async def complete(self, cpu: VCpu) -> Outcome:
        self.exited = False
        self.idled = False
        held, self._held = self._held, None
        if self._stopping is not None or held is None:
            return Outcome.STOP
        call, chain, i, delay = held
        start = i
        if delay is not None:
            v = await delay.verdict
            m = chain[i]
            start = i + 1
            while v is not None:
                if isinstance(v, Answer):
                    cpu.set_result(self._answer(call, chain, i, v))
                    return Outcome.RESUME
                if isinstance(v, Stop):
                    self._mark_stop(v.reason, m)
                    return Outcome.STOP
                if isinstance(v, Delay):
                    v = await v.verdict
                    continue
                raise TypeError(f"monitor {m.name} returned {v!r} for a delayed hypercall")
        elif i == len(chain):
            return await self._complete_exit(call, chain, cpu)
        return await self._run_rest(call, chain, start, cpu)

    async def _run_rest(
        self, call: HypercallEvent, chain: tuple[Monitor, ...], start: int, cpu: VCpu
    ) -> Outcome:
        """The rest of a chain after a delay, on the VM coroutine (delays await inline)."""
        for i in range(start, len(chain)):
            m = chain[i]
            v = m.hypercall(call)
            while isinstance(v, Delay):
                v = await v.verdict
            if v is None:
                continue
            if isinstance(v, Answer):
                cpu.set_result(self._answer(call, chain, i, v))
                return Outcome.RESUME
            if isinstance(v, Stop):
                self._mark_stop(v.reason, m)
                return Outcome.STOP
            raise TypeError(f"monitor {m.name} returned {v!r} for a hypercall")
        assert self._base is not None
        res = self._base(call.nr, call.arg)
        if res == EXIT:
            return await self._complete_exit(call, chain, cpu)
        cpu.set_result(self._done(call, chain, len(chain), res))
        return Outcome.RESUME

    async def _complete_exit(self, call: HypercallEvent, chain: tuple[Monitor, ...], cpu: VCpu) -> Outcome:
        """TERMINATE and IDLE, passed by every monitor: the VM completes them."""
        vm = self.vm
        if call.nr == Hc.TERMINATE:
            self.exit_status = vm._exit_request or 0
            return Outcome.TERMINATE
        self.idled = await vm._idle(call.arg)  # sets EAX = OK and the out fields
        res = self._done(call, chain, len(chain), int(abi.Result.OK))
        if res != abi.Result.OK:
            cpu.set_result(res)
        return Outcome.RESUME

    # ---- Interposer: interrupts, faults ----
    def irq(self, bits: int) -> int:
        if self._logging:
            self.flush_records()
        for m in self._irq:
            bits = m.interrupt(bits) & abi.IRQ_ALL
            if not bits:
                break
        return bits

    async def fault(self, cpu: VCpu) -> Outcome:
        report = cpu.fault
        if report is None:
            return Outcome.FAULT
        if self._logging:
            self.flush_records()
        event = FaultEvent(self.vm.id, report)
        for m in self._fault:
            v = await m.fault(event)
            if v is None:
                continue
            if isinstance(v, Resume):
                cpu.fault = None
                return Outcome.RESUME
            if isinstance(v, Stop):
                self._mark_stop(v.reason, m)
                return Outcome.STOP
            raise TypeError(f"monitor {m.name} returned {v!r} for a fault")
        return Outcome.FAULT

    # ---- device filters ----
    def _filter_tx(self, frame: bytes) -> bytes | int | None:
        if self._logging:
            self.flush_records()
        for m in self._tx:
            out = m.frame_out(frame)
            if out is None or isinstance(out, int):
                return out
            frame = out
        return frame

    def _filter_rx(self, frame: bytes) -> bytes | None:
        if self._logging:
            self.flush_records()
        for m in self._rx:
            out = m.frame_in(frame)
            if out is None:
                return None
            frame = out
        return frame

    def _filter_disk(self, request: DiskRequest) -> DiskRequest | int:
        if self._logging:
            self.flush_records()
        for m in self._disk:
            out = m.disk(request)
            if isinstance(out, int):
                return out
            request = out
        return request
