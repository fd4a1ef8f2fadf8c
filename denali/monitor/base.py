"""What a monitor is: the ``Monitor`` base class, the events it sees and the verdicts it gives.

A monitor sits between a VM and the layer below it (the next monitor, or the kernel).
It interposes on the kinds of event whose hooks it overrides (``Monitor.kinds``, from
``denali.vm.INTERPOSABLE``) and never sees the others, which keep the kernel's direct
path at its direct cost. The hooks, and which way each event flows through a stack
``VM -> m1 -> m2 -> kernel``:

============== ===================================== ============== =========================
kind           hook                                  order          may
============== ===================================== ============== =========================
hypercall      ``hypercall(call)`` before the layer  m1, m2         pass (None), change
               below; ``hypercall_done(call, res)``  (done: m2, m1) ``call.nr``/``arg``/its
               after it                                             struct (``set_args``),
                                                                    ``Answer``, ``Delay``,
                                                                    ``Stop``; done: change
                                                                    the result
interrupt      ``interrupt(bits) -> bits``           m2, m1         drop bits (raise them
                                                                    later with
                                                                    ``Vm.interrupt``)
fault          ``async fault(event)``                m1, m2         pass (None), ``Resume``
                                                                    (after fixing state),
                                                                    ``Stop``
frame_out      ``frame_out(frame)``                  m1, m2         change, drop (None),
                                                                    refuse (a Result code)
frame_in       ``frame_in(frame)``                   m2, m1         change, drop (None)
disk           ``disk(request)``                     m1, m2         change (checked again),
                                                                    refuse (a Result code)
============== ===================================== ============== =========================

Hooks other than ``fault`` and ``Delay`` run inside the hypercall that caused them
(synchronously, on the loop thread or, with worker threads, on the loop after the
slice): they must not block. A ``Delay`` takes the hypercall out of the slice: the VM
waits in its coroutine (others run) until the awaitable gives the monitor's verdict.
Any monitor may also stop its VM (``MonitorStack.stop``) or hold it before its next
instruction (``MonitorStack.hold``).

Every event and verdict has a plain-data form (``denali.monitor.protocol``), so a
monitor can also live elsewhere (another task, another process, a parent VM) and
answer events as messages.

Recording CLOCK: a monitor that only records the CLOCK calls it sees (never changes,
answers or delays them), such as the tracer, says so with ``records_clock = True``.
While every monitor of a VM that interposes on CLOCK says so, the CPU may answer CLOCK
natively (in C, ``KernelConfig.native``) and log the values it returned; the stack
hands them over through ``clocks_read(values)``, oldest first, before any later event
of the VM reaches the monitor (and when the VM leaves the CPU). Such a monitor sees
those calls only as values, not through ``hypercall``/``hypercall_done``; a CLOCK that
takes the Python path (the log was full, the structure is on a new page, worker
threads run the slices) still comes through the hooks, in order. Likewise
``records_calls = True`` for NET_SEND, TIMER_SET and IDLE: those the CPU takes natively
reach the monitor as records through ``calls_read``, in order with the CLOCK values
and every other event of the VM.

State: ``save()`` returns plain data and ``restore(state)`` takes it back (snapshots,
migration; see ``MonitorStack.save``).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from denali import abi
from denali.abi import Result
from denali.memory import PROT_R, PROT_RW

if TYPE_CHECKING:
    from denali.devices.disk.device import DiskRequest
    from denali.fault import FaultReport
    from denali.memory import GuestMemory
    from denali.monitor.stack import MonitorStack

State = dict[str, Any]
Value = int | bytes

_HOOKS: Final = {
    "hypercall": ("hypercall", "hypercall_done"),
    "interrupt": ("interrupt",),
    "fault": ("fault",),
    "frame_out": ("frame_out",),
    "frame_in": ("frame_in",),
    "disk": ("disk",),
}
_CODECS: Final = {h.nr: (h.args, h.args.codec()) for h in abi.HYPERCALLS}


# ---- verdicts ----
@dataclass(frozen=True, slots=True)
class Answer:
    """Complete the hypercall with ``result`` (EAX) without passing it down; ``out``
    fields of its argument structure are written first (name -> value)."""

    result: int
    out: Mapping[str, Value] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the VM (it ends KILLED; ``Vm.wait`` raises ``VmKilledError`` with ``reason``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Resume:
    """After a fault: let the VM go on (from its EIP, which the monitor may have moved)."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Take the hypercall out of the slice: the VM waits until ``verdict`` gives this
    monitor's verdict (None: pass it down; or ``Answer``/``Stop``)."""

    verdict: Awaitable[Answer | Stop | None]


Verdict = Answer | Stop | Delay | None
FaultVerdict = Resume | Stop | None


# ---- events ----
class HypercallEvent:
    """One hypercall on its way down the stack (and its result on the way back up).

    ``nr`` (EAX) and ``arg`` (EBX, the address of the argument structure) may be changed
    by a monitor: the layers below see the new values. ``data`` is for monitors to keep
    per-call notes between ``hypercall`` and ``hypercall_done``.
    """

    __slots__ = ("_data", "arg", "memory", "nr", "vm_id")

    def __init__(self, vm_id: int, memory: GuestMemory, nr: int, arg: int) -> None:
        self.vm_id = vm_id
        self.memory = memory
        self.nr = nr
        self.arg = arg
        self._data: dict[str, Any] | None = None

    @property
    def data(self) -> dict[str, Any]:
        """Notes monitors keep for this call between ``hypercall`` and ``hypercall_done``."""
        if self._data is None:
            self._data = {}
        return self._data

    @property
    def name(self) -> str | None:
        """The hypercall's name ("net_send"), or None for a number no hypercall has."""
        h = abi.HYPERCALL_BY_NR.get(self.nr)
        return h.name if h is not None else None

    def args(self) -> dict[str, Value] | None:
        """The argument structure decoded (every field but padding), or None when the
        number is unknown or the structure is not readable guest memory."""
        codec = _CODECS.get(self.nr)
        if codec is None:
            return None
        spec, st = codec
        if not self.memory.check(self.arg, spec.size, PROT_R):
            return None
        values = st.unpack_from(self.memory.buf, self.arg)
        return {f.name: v for f, v in zip(spec.fields, values, strict=True) if f.direction != "pad"}

    def set_args(self, **fields: Value) -> bool:
        """Write fields of the argument structure (what the layers below read); False
        (nothing written) when a name is not a field or the structure is not writable."""
        return self._write_fields(fields)

    def _write_fields(self, fields: Mapping[str, Value]) -> bool:
        codec = _CODECS.get(self.nr)
        if codec is None:
            return not fields
        spec, _ = codec
        if not fields:
            return True
        if not self.memory.check(self.arg, spec.size, PROT_RW):
            return False
        offs = spec.offsets()
        by_name = {f.name: f for f in spec.fields}
        if any(n not in by_name or by_name[n].direction == "pad" for n in fields):
            return False
        buf = self.memory.buf
        for name, value in fields.items():
            f = by_name[name]
            at = self.arg + offs[name]
            if isinstance(value, bytes):
                buf[at : at + f.size] = value[: f.size].ljust(f.size, b"\0")
            else:
                struct.pack_into(
                    "<" + {1: "B", 2: "H", 4: "I", 8: "Q"}[f.size], buf, at, value & ((1 << (8 * f.size)) - 1)
                )
        return True

    def read(self, addr: int, length: int) -> bytes | None:
        """Guest memory the guest may read, or None (checked against the page map)."""
        return self.memory.read(addr, length) if self.memory.check(addr, length, PROT_R) else None

    def write(self, addr: int, data: bytes) -> bool:
        """Write guest memory the guest may write (checked); False when it may not."""
        if not self.memory.check(addr, len(data), PROT_RW):
            return False
        self.memory.write(addr, data)
        return True


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault on its way down the stack: the kernel's report."""

    vm_id: int
    report: FaultReport


# ---- the monitor ----
class Monitor:
    """Base class of every monitor: passes everything through (see the module docstring).

    ``kinds`` (the event kinds it interposes on) is computed from the hooks a subclass
    overrides; an instance may narrow it (``self.kinds = ...``) before it is attached.
    ``hypercalls``: the hypercall numbers it interposes on (None: all of them).
    ``stack`` is set while it is attached.
    """

    kinds: frozenset[str] = frozenset()
    hypercalls: frozenset[int] | None = None
    stack: MonitorStack | None = None
    records_clock: bool = False
    """True: the monitor only records CLOCK calls (see the module docstring)."""
    records_calls: bool = False
    """True: the monitor only records NET_SEND, TIMER_SET and IDLE calls (see the module
    docstring)."""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kinds" not in cls.__dict__:
            cls.kinds = frozenset(
                k
                for k, hooks in _HOOKS.items()
                if any(getattr(cls, h) is not getattr(Monitor, h) for h in hooks)
            )

    @property
    def name(self) -> str:
        """How logs, stats and traces name this monitor (its class name by default)."""
        return type(self).__name__

    def attached(self, stack: MonitorStack) -> None:
        """Called when the monitor joins a VM's stack (before any event)."""
        self.stack = stack

    def detached(self) -> None:
        """Called when it leaves the stack (no event after this)."""
        self.stack = None

    # ---- hooks (defaults pass everything through) ----
    def hypercall(self, call: HypercallEvent) -> Verdict:
        return None

    def hypercall_done(self, call: HypercallEvent, result: int) -> int:
        return result

    def interrupt(self, bits: int) -> int:
        return bits

    def clocks_read(self, values: Sequence[int]) -> None:
        """CLOCK calls answered natively, as the values they returned (``records_clock``)."""

    def calls_read(self, records: Sequence[tuple[int, int, bytes, bytes]]) -> None:
        """NET_SEND, TIMER_SET or IDLE calls taken natively (``records_calls``), each as
        (number, the VM's clock at the call (IDLE: when it returned), the structure's bytes
        before and after, zero-padded past its size). Their result was OK."""

    async def fault(self, event: FaultEvent) -> FaultVerdict:
        return None

    def frame_out(self, frame: bytes) -> bytes | int | None:
        return frame

    def frame_in(self, frame: bytes) -> bytes | None:
        return frame

    def disk(self, request: DiskRequest) -> DiskRequest | int:
        return request

    # ---- state ----
    def save(self) -> State:
        """The monitor's state as plain data (the VM is held)."""
        return {}

    def restore(self, state: State) -> None:
        """Take back what ``save`` returned (before the VM runs again)."""


def result_name(code: int) -> str | None:
    """``Result`` name of a code ("OK"), or None."""
    try:
        return Result(code).name
    except ValueError:
        return None
