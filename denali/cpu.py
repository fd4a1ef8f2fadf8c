"""A VM's virtual CPU: boots or resumes at CPL 3, runs slices, catches hypercalls and faults.

One ``VCpu`` owns one Unicorn engine and is the engine's callback owner. It knows guest
memory (``GuestMemory``) and one callable, ``dispatch(nr, arg) -> result``, through which
every hypercall leaves it; nothing here knows of VMs, devices or the kernel
(docs/architecture.md, "The CPU"). During a slice:

- ``int $0x80`` calls ``on_interrupt``: ``dispatch`` answers the hypercall right there
  (no exit from emulation) unless it returns ``EXIT``, in which case the slice stops
  right after the ``int`` and the caller of ``run`` completes the call
  (``hcall_nr``/``hcall_arg``, then ``set_result``). With ``defer_hypercalls`` (slices on
  worker threads) every hypercall exits that way and ``deferred`` is set;
- with a syscall route set (``route``, the VM's SYSCALL_ENTRY), an ``int $0x80`` whose
  instruction lies outside the route's code range is a foreign system call, not a
  hypercall: its resume EIP is stored at the route's ``save`` address and the guest
  continues at the route's entry, every other register as the program left it. The
  engine's interrupt hook applies this rule in C (``_preempt.c``); ``on_interrupt``
  sees only hypercalls and exceptions (and, once a fault is recorded in the slice,
  every ``int $0x80``, so the fault's stop lands);
- the native clock (``set_native_clock``): while the VM's owner allows it (no monitor
  interposes on CLOCK, or those that do only record it), the interrupt hook answers
  CLOCK in C, as the clock device
  would (``devices/clock.py``), when its structure lies on a page this CPU found
  writable for the guest at an earlier CLOCK (``_allow_clock``); the page is forgotten
  whenever the TLB is flushed (a permission lowered, a dirty-tracking round) and none
  is remembered while pages are tracked, so the hook never writes where the guest may
  not, nor unseen by dirty tracking. ``hypercalls`` counts both paths;
- the native send (``set_native_send``): while the owner allows it (no monitor on
  NET_SEND or on the frames sent) and no pages are tracked, the hook answers NET_SEND
  in C, checking every pointer against the memory's page map (``prot_map``) as
  ``GuestMemory.check`` would, within the credit ``refresh_tx_credit`` gives it (at
  most the room in the port's queue, so the guest never hears OK for a frame the
  Python path would have refused as FULL); the frames wait in the engine's buffer until the owner
  calls ``drain_tx`` after the slice, and a NET_SEND that takes the Python path drains
  them first, so the port sees every frame in the guest's order;
- the native console (``set_native_console``): while no monitor interposes on
  CONSOLE_WRITE, the hook copies what the guest writes into a small buffer when the
  structure and the bytes are readable (``prot_map``) and fit; the owner hands the bytes
  to the console after the slice (``drain_console``), and a console write that takes
  the Python path drains them first, so the console sees them in the guest's order;
- any other vector is a guest fault (divide error, #GP from a privileged instruction at
  CPL 3, int3, ...) and stops the slice;
- the TLB-fill hook answers page permissions from the ``GuestMemory`` map, so faults on
  unmapped or forbidden pages end the slice with ``UC_ERR_EXCEPTION`` and the refused
  access is remembered for the report.

Nothing here raises into Unicorn: exceptions inside callbacks are caught and turned into
an ``INTERNAL`` exit so the kernel can fail this VM alone.

State: ``save()`` returns a ``CpuState`` (general registers, EIP, EFLAGS, x87/SSE, FS/GS
and the TLS descriptors) between slices; a ``VCpu`` built with ``state=`` resumes from
it. ``CpuState.pack``/``unpack`` give its stable byte form (swap, snapshots).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, Final

from denali import _uc, abi
from denali.errors import ConfigError
from denali.fault import FaultKind, FaultReport, disassemble, fault_address
from denali.memory import PROT_R, PROT_RW, PROT_RX, PROT_W, PROT_X, GuestMemory, Region

if TYPE_CHECKING:
    from denali.loader import Image
    from denali.preempt import Lane

_TRAMPOLINE: Final = abi.Layout.KERNEL_PAGE + 0x100
_KSTACK: Final = abi.Layout.KERNEL_PAGE + 0xF00
_IRET_FRAME: Final = struct.Struct("<IIIII")
_BOOT_EFLAGS: Final = 0x202
_VECTOR: Final = abi.HYPERCALL_VECTOR
_CLOCK: Final = int(abi.Hc.CLOCK)
_CLOCK_ARGS: Final = abi.HYPERCALL_BY_NR[_CLOCK].args
_NATIVE_CLOCK: Final = _CLOCK_ARGS.size == 8 and _CLOCK_ARGS.offsets()["now_ns"] == 0
"""The C hook writes the structure as one u64: with another layout it stays off."""
_NET_SEND: Final = int(abi.Hc.NET_SEND)
_TIMER_SET: Final = int(abi.Hc.TIMER_SET)
_IDLE: Final = int(abi.Hc.IDLE)
_CONSOLE_WRITE: Final = int(abi.Hc.CONSOLE_WRITE)
_CONSOLE_WRITE_ERR: Final = int(abi.Hc.CONSOLE_WRITE_ERR)
_NATIVE_CONSOLE: Final = (
    abi.HYPERCALL_BY_NR[_CONSOLE_WRITE].args.offsets() == {"buf": 0, "len": 4}
    and _uc.CONSOLE_BUFFER <= abi.CONSOLE_MAX_WRITE
)
_NATIVE_IDLE: Final = abi.HYPERCALL_BY_NR[_IDLE].args.offsets() == {
    "deadline_ns": 0,
    "now_ns": 8,
    "pending": 16,
    "_pad": 20,
}
_NATIVE_TIMER: Final = abi.HYPERCALL_BY_NR[_TIMER_SET].args.offsets() == {"deadline_ns": 0}
_NATIVE_SEND: Final = abi.HYPERCALL_BY_NR[_NET_SEND].args.offsets() == {
    "frames": 0,
    "count": 4,
    "sent": 8,
    "_pad": 12,
}
"""The layout ``_preempt.c`` reads (checked once, so an ABI change turns it off, not wrong)."""
_KERNEL_FIELDS: Final = (int(abi.Layout.VREGS), int(abi.Layout.VREGS) + abi.VREGS.size)
CLOCK_LOG: Final = 1024
"""Native CLOCKs logged before the next one goes to Python (which empties the log)."""
CALL_LOG: Final = 256
"""Records of NET_SEND and TIMER_SET the call log holds (``set_call_log``)."""
USER_EFLAGS: Final = 0x0CD5 | 0x0100 | 0x40000 | 0x200000
"""EFLAGS bits a CPL-3 program may change: CF PF AF ZF SF DF OF, TF, AC, ID."""
EXIT: Final = -1
"""Dispatch result: stop the slice; the caller of ``run`` completes this hypercall."""
Dispatch = Callable[[int, int], int]
"""``dispatch(nr, arg)``: a hypercall's result code (EAX), or ``EXIT``."""
_VECTOR_KIND: Final = {
    0: FaultKind.DIVIDE,
    3: FaultKind.BREAKPOINT,
    6: FaultKind.INVALID_INSN,
    13: FaultKind.PRIVILEGED,
}
_ACCESS: Final = {_uc.MEM_READ: "read", _uc.MEM_WRITE: "write", _uc.MEM_FETCH: "execute"}
_NEEDS: Final = {_uc.MEM_READ: PROT_R, _uc.MEM_WRITE: PROT_W, _uc.MEM_FETCH: PROT_X}
_GPRS: Final = tuple(getattr(_uc, f"REG_{n.upper()}") for n in _uc.GPR_NAMES)


class Exit(IntEnum):
    """Why a slice ended."""

    PREEMPTED = 0
    HYPERCALL = 1
    FAULT = 2
    INTERNAL = 3


@dataclass(frozen=True, slots=True)
class CpuState:
    """Everything of a CPU a guest can observe between slices.

    ``regs`` are the general registers, EIP and EFLAGS in ``_uc.GPR_NAMES`` order;
    ``fpu`` the x87/SSE state (``_uc.FPU_STATE_SIZE`` bytes); ``fs``/``gs`` the segment
    selectors and ``tls`` the GDT's TLS descriptors (``_uc.TLS_SIZE`` bytes).
    """

    regs: tuple[int, ...]
    fpu: bytes
    fs: int = _uc.KERNEL_DS
    gs: int = _uc.KERNEL_DS
    tls: bytes = bytes(_uc.TLS_SIZE)

    VERSION: ClassVar[int] = 1
    _HEAD: ClassVar[struct.Struct] = struct.Struct("<II10IHH")

    @classmethod
    def boot(cls, entry: int, stack_top: int) -> CpuState:
        """The state a fresh VM starts in: EIP at the entry point, ESP at the top of memory."""
        regs = dict.fromkeys(_uc.GPR_NAMES, 0)
        regs.update(eip=entry, esp=stack_top, eflags=_BOOT_EFLAGS)
        return cls(tuple(regs[n] for n in _uc.GPR_NAMES), _uc.reset_fpu())

    def registers(self) -> dict[str, int]:
        """The general registers, EIP and EFLAGS by name."""
        return dict(zip(_uc.GPR_NAMES, self.regs, strict=True))

    def pack(self) -> bytes:
        """The stable byte form (version, size, registers, selectors, TLS, FPU)."""
        body = self._HEAD.pack(self.VERSION, self.size(), *self.regs, self.fs, self.gs)
        return body + self.tls + self.fpu

    @classmethod
    def size(cls) -> int:
        return cls._HEAD.size + _uc.TLS_SIZE + _uc.FPU_STATE_SIZE

    @classmethod
    def unpack(cls, data: bytes) -> CpuState:
        """Inverse of ``pack``; ``ConfigError`` for another version or a wrong size."""
        if len(data) != cls.size():
            raise ConfigError(f"CPU state is {len(data)} bytes, expected {cls.size()}")
        version, size, *rest = cls._HEAD.unpack_from(data)
        if version != cls.VERSION or size != cls.size():
            raise ConfigError(f"CPU state version {version} (this kernel reads {cls.VERSION})")
        regs, fs, gs = tuple(rest[:10]), rest[10], rest[11]
        at = cls._HEAD.size
        tls = data[at : at + _uc.TLS_SIZE]
        return cls(regs, data[at + _uc.TLS_SIZE :], fs, gs, tls)


@dataclass(frozen=True, slots=True)
class SyscallRoute:
    """Where foreign system calls go (SYSCALL_ENTRY): an ``int $0x80`` at an address
    outside [code_lo, code_hi) stores its resume EIP at ``save`` and enters ``entry``."""

    entry: int
    save: int
    code_lo: int
    code_hi: int


def layout_regions(image: Image, mem_size: int) -> tuple[list[Region], int, int]:
    """The page map of a VM: (regions, heap_start, heap_end). An image composed with a
    page map of its own (``Image.regions``, a personality and its program) gives it."""
    if image.regions:
        return list(image.regions), image.heap[0], image.heap[1]
    page = abi.PAGE_SIZE
    stack_lo = mem_size - abi.STACK_SIZE
    heap_end = stack_lo - page  # the page below the stack is the guard
    heap_start = image.end
    regions = [
        Region(abi.Layout.VREGS, abi.Layout.VREGS + page, PROT_RW, "vregs"),
        Region(abi.Layout.KERNEL_PAGE, abi.Layout.KERNEL_PAGE + page, PROT_RX, "kernel"),
    ]
    for i, seg in enumerate(image.segments):
        regions.append(Region(seg.page_start, seg.page_end, seg.prot, f"segment{i}"))
    if heap_end > heap_start:
        regions.append(Region(heap_start, heap_end, PROT_RW, "heap"))
    regions.append(Region(stack_lo, mem_size, PROT_RW, "stack"))
    return regions, heap_start, max(heap_start, heap_end)


class VCpu:
    """The CPU of one VM. Not thread-safe: one slice at a time (see the module docstring)."""

    __slots__ = (
        "_console_sink",
        "_entry_state",
        "_epoch",
        "_forbidden",
        "_hcalls",
        "_invalid",
        "_last_fill",
        "_send_allowed",
        "_timer_sink",
        "_tx_room",
        "_tx_sink",
        "_vector",
        "count",
        "defer_hypercalls",
        "deferred",
        "dispatch",
        "eip",
        "engine",
        "error",
        "exit",
        "fault",
        "hcall_arg",
        "hcall_nr",
        "image_name",
        "memory",
        "native_clock",
        "native_console",
        "native_send",
        "native_timer",
        "route",
        "route_cell",
        "vm_id",
        "yielded",
    )

    def __init__(
        self,
        vm_id: int,
        image_name: str,
        memory: GuestMemory,
        dispatch: Dispatch,
        tcg_buffer: int,
        state: CpuState,
        route: SyscallRoute | None = None,
    ) -> None:
        """Build the engine over ``memory`` and load ``state`` (``CpuState.boot`` for a
        fresh VM). Writes the kernel page (GDT, TLS entries, trampoline, iret frame).
        ``route``: where foreign system calls go (``set_route``). ``ResourceError`` when
        Unicorn cannot create the engine."""
        self.vm_id = vm_id
        self.image_name = image_name
        self.memory = memory
        self.dispatch = dispatch
        self.exit = Exit.PREEMPTED
        self.hcall_nr = 0
        self.hcall_arg = 0
        self.fault: FaultReport | None = None
        self.error: BaseException | None = None
        self._last_fill = (0, 0, 0)
        self._vector: int | None = None
        self._invalid = False
        self._forbidden: tuple[str, dict[str, int]] | None = None
        self._hcalls = 0
        self.native_clock = False
        """CLOCK may be answered by the engine's C hook (``set_native_clock``)."""
        self.native_send = False
        """The hook answers NET_SEND now (allowed and no pages tracked)."""
        self._send_allowed = False
        self._tx_sink: Callable[[list[bytes]], None] | None = None
        self._tx_room: Callable[[], int] | None = None
        self.native_timer = False
        self._timer_sink: Callable[[int], None] | None = None
        self.native_console = False
        """The hook answers CONSOLE_WRITE (``set_native_console``)."""
        self.yielded = False
        """The slice ended at an IDLE whose deadline had passed and the hook wrote its out
        fields as if no interrupt were pending (``set_native_idle``'s ``answers``): only
        EAX is left to write."""
        self._console_sink: Callable[[bytes], None] | None = None
        self.route: SyscallRoute | None = None
        self.defer_hypercalls = False
        """Set when slices run on worker threads: every hypercall exits emulation."""
        self.deferred = False
        self._epoch = memory.epoch
        """The memory's tracking epoch this engine's TLB was filled under."""
        self.count = 0
        """Instructions the next slice may run (0: no bound); a debugger's single step
        sets 1 (denali.monitor.gdb). Reset when the slice ends."""
        mem = memory.buf
        kp = abi.Layout.KERNEL_PAGE
        gdt = _uc.GDT + state.tls
        mem[kp : kp + len(gdt)] = gdt
        mem[_TRAMPOLINE] = 0xCF  # iret
        regs = state.registers()
        frame = _IRET_FRAME.pack(regs["eip"], _uc.USER_CS, regs["eflags"], regs["esp"], _uc.USER_DS)
        mem[_KSTACK - len(frame) : _KSTACK] = frame
        self.engine = _uc.Engine(self, memory.address, memory.size, tcg_buffer)
        try:
            self.engine.enter_user_mode(kp, _KSTACK - len(frame), state.fs, state.gs)
            for reg, name in zip(_GPRS[:7], _uc.GPR_NAMES[:7], strict=True):  # eax..ebp
                self.engine.reg_write(reg, regs[name])
            if state.fpu != _uc.reset_fpu():  # a fresh engine already holds that state
                self.engine.write_fpu(state.fpu)
            self.engine.install_hooks()
            self.set_route(route)
        except BaseException:
            self.engine.close()
            raise
        memory.on_lowered = self.engine.flush_tlb
        self.route_cell = self.engine.route
        """The structure the engine's C hook shares with this CPU (``_uc.RouteCell``)."""
        self.engine.set_page_map(memory.prot_map_address, len(memory.prot_map), _KERNEL_FIELDS)
        self.eip = _TRAMPOLINE
        self._entry_state = state
        """What the CPU enters user mode with: its state until the first slice runs."""

    # ---- engine callbacks (run inside emu_start, on the slice's thread) ----
    def on_interrupt(self, intno: int) -> None:
        eng = self.engine
        if self.exit is Exit.FAULT:  # already faulted (a stop lands at block end)
            eng.stop()
            return
        if intno != _VECTOR:
            self._vector = intno
            self.exit = Exit.FAULT
            eng.hold_route(True)
            eng.stop()
            return
        route = self.route_cell  # EAX and EBX, read by the C hook
        nr = route.hc_nr
        arg = route.hc_arg
        self._hcalls += 1
        if self.defer_hypercalls:  # on a worker thread: the loop handles it
            self.hcall_nr = nr
            self.hcall_arg = arg
            self.deferred = True
            self.exit = Exit.HYPERCALL
            eng.stop()
            return
        if nr == _NET_SEND and self.native_send:
            self.drain_tx()  # the frames the hook took go first
        elif (nr == _CONSOLE_WRITE or nr == _CONSOLE_WRITE_ERR) and self.native_console:
            self.drain_console()  # the bytes the hook took go first
        elif nr == _TIMER_SET and self.native_timer:
            self._apply_timer()  # the hook's earlier TIMER_SET first: this one replaces it
        try:
            res = self.dispatch(nr, arg)
            if nr == _NET_SEND and self.native_send:
                self.refresh_tx_credit()
        except Exception as exc:  # a kernel bug must fail this VM only
            self.error = exc
            self.exit = Exit.INTERNAL
            eng.stop()
            return
        if res == EXIT:
            self.hcall_nr = nr
            self.hcall_arg = arg
            self.exit = Exit.HYPERCALL
            eng.stop()
        else:
            route.hc_result = res & 0xFFFFFFFF  # the C hook writes EAX when this returns
            route.hc_answer = 1
            if nr == _CLOCK and not res and self.native_clock:
                self._allow_clock(arg)

    # ---- the native clock ----
    @property
    def hypercalls(self) -> int:
        """Hypercalls this CPU took, those the C hook answered included."""
        return self._hcalls + self.native_hypercalls

    @property
    def native_hypercalls(self) -> int:
        """Hypercalls the C hook answered (CLOCK, NET_SEND, TIMER_SET, CONSOLE_WRITE) or took
        the exit of (IDLE)."""
        eng = self.engine
        return (
            eng.native_clocks + eng.native_sends + eng.native_timers + eng.native_idles + eng.native_consoles
        )

    def set_native_clock(self, allowed: bool, clock_zero: int, log: bool = False) -> None:
        """Let the engine's hook answer CLOCK itself (``allowed``), the VM's clock reading
        ``time.monotonic_ns() - clock_zero``; False sends every CLOCK to ``dispatch``
        (a monitor interposes on it). ``log``: keep each value answered for
        ``take_logs`` (monitors record them); turning the log off drops what it
        held, so take it first. Between slices."""
        self.native_clock = allowed and _NATIVE_CLOCK
        self.engine.set_native_clock(_VECTOR, _CLOCK if self.native_clock else 0, clock_zero)
        self.engine.set_clock_log(CLOCK_LOG if log and self.native_clock else 0)

    # ---- the native send ----
    def set_native_send(
        self, allowed: bool, sink: Callable[[list[bytes]], None] | None, room: Callable[[], int] | None
    ) -> None:
        """Let the engine's hook answer NET_SEND itself (``allowed``, with ``sink`` taking
        the frames it held, in order, and ``room`` saying how many frames the port's queue
        still takes); False sends every NET_SEND to ``dispatch``. Frames already held stay
        for ``drain_tx``. Between slices."""
        self._send_allowed = allowed and _NATIVE_SEND and sink is not None and room is not None
        self._tx_sink, self._tx_room = sink, room
        self._sync_send()

    def _sync_send(self) -> None:
        on = self._send_allowed and self.memory.dirty is None
        self.engine.set_native_send(_NET_SEND if on else 0)
        self.native_send = on

    def refresh_tx_credit(self) -> None:
        """Give the native send the room left in the port's queue (after a slice in which
        the hook sent, and after a NET_SEND the Python path answered). In between the
        credit only ever lags the room (the switch drains the queue), so a hook short of
        credit hands the call to Python, which refreshes it; it starts at 0 whenever the
        native send is turned on."""
        if self.native_send and self._tx_room is not None:
            self.engine.set_tx_credit(self._tx_room())

    def drain_tx(self) -> None:
        """Hand the frames the hook took to the owner's sink (after each slice, on the
        loop's thread)."""
        eng = self.engine
        if eng.tx_pending():
            frames = eng.take_frames()
            sink = self._tx_sink
            if sink is not None:
                sink(frames)
        if eng.tx_wanted():  # a NET_SEND found no buffer: the next one has one
            eng.give_tx_buffer()

    # ---- the native console ----
    def set_native_console(self, allowed: bool, sink: Callable[[bytes], None] | None) -> None:
        """Let the engine's hook answer CONSOLE_WRITE itself (``allowed``), ``sink`` taking
        the bytes it kept, in order, after the slice or before a console write that takes
        the Python path. Between slices; bytes already kept go to the old sink first."""
        self.drain_console()
        self.native_console = allowed and _NATIVE_CONSOLE and sink is not None
        self._console_sink = sink
        self.engine.set_native_console(_CONSOLE_WRITE if self.native_console else 0)

    def drain_console(self) -> None:
        """Hand the bytes the hook kept to the sink (on the loop's thread)."""
        eng = self.engine
        data = eng.take_console()
        if data and self._console_sink is not None:
            self._console_sink(data)
        eng.give_console_buffer()  # a write found none: the next one has one

    # ---- the native timer, and what the hook leaves after a slice ----
    def set_native_timer(self, allowed: bool, sink: Callable[[int], None] | None) -> None:
        """Let the engine's hook answer TIMER_SET itself (``allowed``), ``sink`` arming the
        VM's timer with each deadline (on the VM's clock, 0 disarms) after the slice, or
        before a TIMER_SET that takes the Python path. Between slices; a deadline the hook
        kept goes to the sink first."""
        self._apply_timer()
        self.native_timer = allowed and _NATIVE_TIMER and sink is not None
        self._timer_sink = sink
        self.engine.set_native_timer(_TIMER_SET if self.native_timer else 0)

    def set_native_idle(self, allowed: bool, answers: bool = False) -> None:
        """Let the engine's hook end the slice at IDLE itself (``allowed``: no monitor
        interposes on it); the slice then returns ``Exit.HYPERCALL`` as if ``dispatch``
        had said EXIT. ``answers``: an IDLE whose deadline passed also gets its out
        fields there (``yielded``; no monitor records IDLE). Between slices."""
        self.engine.set_native_idle(_IDLE if allowed and _NATIVE_IDLE else 0, answers and _NATIVE_IDLE)

    def _apply_timer(self) -> None:
        deadline = self.engine.take_timer()
        if deadline is not None and self._timer_sink is not None:
            self._timer_sink(deadline)

    def after_slice(self) -> None:
        """Hand over what the hook left during the slice: the frames it took (to the NIC,
        in order), the timer it armed (to the clock), the bytes written (to the console).
        After every slice, on the loop's thread, before anything else looks at the VM's
        devices."""
        route = self.route_cell
        work = route.work
        if work:
            route.work = 0
            if work & _uc.WORK_TIMER:
                self._apply_timer()
            if work & _uc.WORK_TX:
                self.drain_tx()
                self.refresh_tx_credit()  # the frames are in the port's queue now
            if work & _uc.WORK_CONSOLE:
                self.drain_console()

    def set_call_log(self, on: bool) -> None:
        """Keep a record of each NET_SEND and TIMER_SET the hook answers (a monitor that
        only records them, ``Monitor.records_calls``), for ``take_logs``; turning it off
        drops what it held. Between slices."""
        self.engine.set_call_log(CALL_LOG if on else 0)

    def take_logs(self) -> tuple[list[int], list[_uc.CallRecord]]:
        """The clock log's values and the call log's records, emptied together (a record's
        clock position says how many of the values came before it)."""
        return self.engine.take_logs()

    def answered(self, nr: int, arg: int, res: int) -> None:
        """``dispatch`` answered hypercall ``nr`` with ``res`` outside a hook (a deferred
        one, on the loop): a CLOCK there teaches the native clock its page too."""
        if nr == _CLOCK and not res and self.native_clock:
            self._allow_clock(arg)

    def _allow_clock(self, arg: int) -> None:
        """A CLOCK at ``arg`` succeeded: its page becomes the native clock's if the guest
        may write all of it (never the register page: its kernel fields are refused)
        and no dirty tracking runs."""
        mem = self.memory
        page = arg // abi.PAGE_SIZE
        if mem.dirty is None and mem.check(page * abi.PAGE_SIZE, abi.PAGE_SIZE, PROT_RW):
            self.engine.allow_clock_page(page)

    def on_tlb_fill(self, vaddr: int, access: int) -> int:
        mem = self.memory
        prot = mem.prot_at(vaddr) if vaddr < mem.size else 0
        self._last_fill = (vaddr, access, prot)
        dirty = mem.dirty
        if dirty is not None and prot & PROT_W:  # tracking: writable only once marked
            page = vaddr >> 12
            if access == _uc.MEM_WRITE:
                dirty[page] = 1
            elif not dirty[page]:
                return prot & ~PROT_W
        return prot

    def on_invalid_insn(self) -> None:
        self._invalid = True

    def on_forbidden_insn(self, name: str) -> None:
        # A stop from an instruction hook lands at the end of the block, so the
        # faulting EIP is taken now.
        self._forbidden = (name, self.engine.read_gprs())
        self.exit = Exit.FAULT
        self.engine.hold_route(True)
        self.engine.stop()

    # ---- slices ----
    def run(self, lane: Lane, deadline_ns: int) -> Exit:
        """Run one slice until a hypercall exit, a fault, or ``deadline_ns``
        (``time.monotonic_ns()``), when the watchdog preempts it."""
        self._before_run()
        eng = self.engine
        if self._epoch != self.memory.epoch:  # dirty tracking began or a round ended
            eng.flush_tlb()
            self._epoch = self.memory.epoch
            if self._send_allowed:  # tracking: NET_SEND to Python, which marks "sent"
                self._sync_send()
        count, self.count = self.count, 0
        # clears the stop flag and the route's hold; the lane's watchdog stops it at the deadline
        err = eng.run_slice(self.eip, count, lane.watchdog, lane.index, deadline_ns)
        return self._after_run(err)

    def _before_run(self) -> None:
        self.exit = Exit.PREEMPTED
        self.deferred = False
        self._vector = None
        self._forbidden = None  # a monitor may have resumed the VM after a fault
        self._invalid = False

    def ready_for_c(self) -> bool:
        """Ready the CPU for slices C runs without Python (``denali.sleep``): True when
        none of what ``run`` does first is needed (no dirty-tracking change to apply, no
        step count, nothing for the owner from the last slice); its EIP goes to the route.
        Between slices."""
        route = self.route_cell
        if self._epoch != self.memory.epoch or self.count or route.work or route.idle_exit:
            return False
        self._before_run()
        route.eip = self.eip
        return True

    def ran_in_c(self, err: int) -> Exit:
        """The last slice C ran ended with uc_err ``err``: its exit, as ``run`` returns it."""
        return self._after_run(err)

    def left_c(self) -> None:
        """C ran slices that ended as waits: the EIP they left."""
        self.eip = self.route_cell.eip

    def _after_run(self, err: int) -> Exit:
        route = self.route_cell
        self.eip = route.eip
        self.yielded = False
        if route.idle_exit and self.exit is Exit.PREEMPTED:  # the hook ended it at an IDLE
            self.yielded = route.idle_exit == 2
            route.idle_exit = 0
            self.hcall_nr, self.hcall_arg = route.hc_nr, route.hc_arg
            self.exit = Exit.HYPERCALL
        if err and self.exit not in (Exit.FAULT, Exit.INTERNAL):
            self.exit = Exit.FAULT
        if self.exit == Exit.FAULT:
            self.fault = self._classify(err)
        return self.exit

    def save(self) -> CpuState:
        """The CPU's state (between slices only)."""
        if self.eip == _TRAMPOLINE:  # not in user mode yet: what it will enter it with
            return self._entry_state
        eng = self.engine
        regs = eng.read_gprs()
        regs["eip"] = self.eip
        kp = abi.Layout.KERNEL_PAGE + len(_uc.GDT)
        # Segment selectors are 16 bits (Unicorn writes only those of the 32-bit buffer).
        return CpuState(
            tuple(regs[n] for n in _uc.GPR_NAMES),
            eng.read_fpu(),
            eng.reg_read(_uc.REG_FS) & 0xFFFF,
            eng.reg_read(_uc.REG_GS) & 0xFFFF,
            bytes(self.memory.buf[kp : kp + _uc.TLS_SIZE]),
        )

    def set_route(self, route: SyscallRoute | None) -> None:
        """Route foreign system calls to ``route`` from the next ``int $0x80`` on (None:
        every ``int $0x80`` is a hypercall)."""
        self.route = route
        if route is None:
            self.engine.set_route(0, 0, 0, 0)
        else:
            self.engine.set_route(route.entry, route.save, route.code_lo, route.code_hi)

    @property
    def syscalls(self) -> int:
        """Foreign system calls routed to ``route.entry`` by this CPU."""
        return self.engine.routed

    def set_registers(self, regs: dict[str, int]) -> None:
        """Write general registers, EIP and EFLAGS by name (between slices only; names
        not in ``_uc.GPR_NAMES`` are ignored). A debugger's register writes. EFLAGS
        takes only the bits a CPL-3 program may change itself (``USER_EFLAGS``); IOPL,
        IF and the rest keep their value, so a write never gives the guest privilege."""
        eng = self.engine
        for reg, name in zip(_GPRS, _uc.GPR_NAMES, strict=True):
            if name not in regs:
                continue
            value = regs[name] & 0xFFFFFFFF
            if name == "eip":
                self.eip = value
            elif name == "eflags":
                old = eng.reg_read(reg)
                eng.reg_write(reg, (old & ~USER_EFLAGS) | (value & USER_EFLAGS))
            else:
                eng.reg_write(reg, value)

    def set_result(self, result: int) -> None:
        """Complete an exited hypercall: its result code goes to EAX (written as the next
        slice starts; every register read sees it already)."""
        self.engine.set_eax_later(result)

    def deliver_irq(self, entry: int, mask: int) -> bool:
        """Push (eip, eflags, mask) on the guest stack and jump to ``entry``.

        Returns False (and records a fault) if the stack has no writable room.
        """
        eng = self.engine
        esp = eng.reg_read(_uc.REG_ESP)
        eflags = eng.reg_read(_uc.REG_EFLAGS)
        new_sp = esp - 12
        if new_sp < 0 or not self.memory.check(new_sp, 12, PROT_RW):
            self.fault = self._report(FaultKind.BAD_IRQ_FRAME, address=new_sp & 0xFFFFFFFF, access="write")
            return False
        struct.pack_into("<III", self.memory.buf, new_sp, mask, eflags, self.eip)
        eng.reg_write(_uc.REG_ESP, new_sp)
        self.eip = entry
        return True

    # ---- fault reports ----
    def _classify(self, err: int) -> FaultReport:
        if self._forbidden is not None:
            name, regs = self._forbidden
            return self._report(FaultKind.PRIVILEGED, access=name, regs=regs)
        if self._vector is not None:
            kind = _VECTOR_KIND.get(self._vector, FaultKind.CPU_EXCEPTION)
            if self._vector not in _VECTOR_KIND and self._vector >= 32:
                kind = FaultKind.BAD_INTERRUPT
            return self._report(kind, vector=self._vector, eip=self._trap_origin(self._vector))
        if self._invalid or err == _uc.UC_ERR_INSN_INVALID:
            return self._report(FaultKind.INVALID_INSN)
        page, access, prot = self._last_fill
        needs = _NEEDS.get(access, PROT_R)
        if prot & needs != needs:
            regs = self.engine.read_gprs()
            addr = fault_address(self._code_at(regs["eip"]), regs["eip"], regs, page, access == _uc.MEM_FETCH)
            return self._report(
                self._page_kind(addr, prot), address=addr, access=_ACCESS.get(access), regs=regs
            )
        return self._report(FaultKind.CPU_EXCEPTION, access=_uc.strerror(err))

    def _trap_origin(self, vector: int) -> int | None:
        """EIP of the ``int3``/``int n`` that trapped (traps leave EIP after it), else None."""
        eip = self.engine.reg_read(_uc.REG_EIP)
        mem = self.memory
        if vector == 3 and eip >= 1 and mem.check(eip - 1, 1, PROT_R) and mem.buf[eip - 1] == 0xCC:
            return eip - 1
        if (
            (vector >= 32 or vector == 3)
            and eip >= 2
            and mem.check(eip - 2, 2, PROT_R)
            and mem.buf[eip - 2] == 0xCD
            and mem.buf[eip - 1] == vector
        ):
            return eip - 2
        return None

    def _page_kind(self, vaddr: int, prot: int) -> FaultKind:
        if prot:
            return FaultKind.PROTECTION
        if vaddr < abi.PAGE_SIZE:
            return FaultKind.NULL_POINTER
        if vaddr >= abi.Layout.KERNEL_SPACE:
            return FaultKind.KERNEL_SPACE
        if vaddr >= self.memory.size:
            return FaultKind.OUTSIDE_MEMORY
        guard = self.memory.size - abi.STACK_SIZE - abi.PAGE_SIZE
        if guard <= vaddr < guard + abi.PAGE_SIZE:
            return FaultKind.STACK_OVERFLOW
        return FaultKind.UNMAPPED

    def _code_at(self, eip: int) -> bytes:
        """Up to 32 bytes of readable code at ``eip`` (empty when it is not readable)."""
        mem = self.memory
        if not mem.check(eip, 1, PROT_R):
            return b""
        r = mem.region_at(eip)
        end = min(eip + 32, r.end if r else eip)
        return mem.read(eip, end - eip)

    def _report(
        self,
        kind: FaultKind,
        address: int | None = None,
        access: str | None = None,
        vector: int | None = None,
        eip: int | None = None,
        regs: dict[str, int] | None = None,
    ) -> FaultReport:
        if regs is None:
            regs = self.engine.read_gprs()
        if eip is None:
            eip = regs["eip"]
        code = self._code_at(eip)
        return FaultReport(
            self.vm_id,
            self.image_name,
            kind,
            eip,
            regs,
            address,
            access,
            vector,
            disassemble(code, eip) if code else (),
        )

    def close(self) -> None:
        if self.memory.on_lowered == self.engine.flush_tlb:
            self.memory.on_lowered = None
        self.engine.close()
