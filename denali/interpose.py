"""The seam between a VM and the monitors stacked on it: what ``Vm`` calls, and nothing more.

``denali.monitor`` implements this protocol (``MonitorStack``); ``denali.vm`` and the
devices only call it, so they import nothing of the monitor layer (it sits above them).
A VM without monitors has no interposer at all and pays nothing; a VM with one calls
it only for the event kinds in ``Vm.interposed`` (the monitor layer keeps that set
true: it is what a fast path reads to know which events must take the Python path).

Where each kind is interposed on:

- ``hypercall``: the interposer wraps the VM's dispatch function (``wrap``), inside the
  CPU hook. When a monitor delays a hypercall, or the call is one the VM coroutine
  completes (TERMINATE, IDLE), the wrapper returns ``EXIT`` and sets ``exited``; the
  coroutine then awaits ``complete``, which finishes the call (EAX set) and says what
  the VM does next (``Outcome``).
- ``interrupt``: ``irq(bits)`` as a batch is delivered (through the entry point or as
  IDLE's return value): it returns the bits to deliver (the rest are dropped).
- ``fault``: ``fault(cpu)`` when a slice ends in a fault: resume the VM, let it fault,
  or stop it.
- ``frame_out``/``frame_in``/``disk``: filters the NIC and disk devices call
  (``denali.devices.nic.Nic.tx_filter``/``rx_filter``, ``Disks.request_filter``), set
  and cleared by the monitor layer.

``gating``/``gate()``: when ``gating`` is true the VM awaits ``gate()`` before its next
slice and before it completes an IDLE: how a monitor holds a VM (a debugger's stop),
the VM waiting, every other VM running.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from denali.cpu import Dispatch, VCpu
    from denali.memory import GuestMemory


class Outcome(IntEnum):
    """What a VM does after the interposer completed an event."""

    RESUME = 0
    """Go on (a completed hypercall's result is in EAX)."""
    TERMINATE = 1
    """The guest's TERMINATE went through: end with ``exit_status``."""
    FAULT = 2
    """Let the fault stand: the VM ends FAULTED."""
    STOP = 3
    """A monitor stopped the VM: it ends KILLED (``Vm.stopped_by`` says why)."""


class Interposer(Protocol):
    """What a VM calls when monitors are stacked on it (see the module docstring)."""

    exited: bool
    """Set by the wrapped dispatch when it returned EXIT; ``complete`` clears it."""
    gating: bool
    """True while a monitor wants the VM held before its next slice."""
    exit_status: int
    """The exit status of a TERMINATE that ``complete`` let through."""
    idled: bool
    """Whether the IDLE that ``complete`` finished waited (the arbiter's fairness)."""

    def wrap(self, dispatch: Dispatch, memory: GuestMemory) -> Dispatch:
        """The dispatch function the VM's CPU uses, given the kernel's (``dispatch`` is
        returned unchanged when no monitor interposes on hypercalls)."""
        ...

    def interposes_on(self, nr: int) -> bool:
        """Whether a monitor interposes on hypercall ``nr`` (the CPU's C hook may answer
        a hypercall no monitor sees: the native clock)."""
        ...

    def records(self, nr: int) -> bool:
        """Every monitor interposing on hypercall ``nr`` only records it (CLOCK:
        ``Monitor.records_clock``; NET_SEND, TIMER_SET, IDLE: ``records_calls``): the CPU
        may take it natively if what it did reaches the monitors (``flush_records``,
        ``record_call``)."""
        ...

    def record_call(self, nr: int, before: bytes, after: bytes) -> None:
        """Hypercall ``nr`` (IDLE), which ``records(nr)`` let the CPU take natively, has
        returned OK: its structure was ``before`` at the call and is ``after`` now."""
        ...

    def flush_records(self) -> None:
        """Take what the CPU logged natively to the monitors (the VM calls this before its
        CPU goes away)."""
        ...

    async def complete(self, cpu: VCpu) -> Outcome:
        """Finish the hypercall the wrapper took out of the slice."""
        ...

    def irq(self, bits: int) -> int:
        """The interrupt bits to deliver now of ``bits`` (a non-empty batch)."""
        ...

    async def fault(self, cpu: VCpu) -> Outcome:
        """A slice ended in the fault ``cpu.fault``: RESUME, FAULT or STOP."""
        ...

    async def gate(self) -> None:
        """Return when the VM may go on (called while ``gating``)."""
        ...
