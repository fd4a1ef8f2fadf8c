"""VMs whose IDLE waits, and the wake-ups that end them, are run in C (``_preempt.c``, 12.).

A VM waiting in IDLE on the native path with a deadline (its one-shot timer, or the
IDLE's own) and nothing about it that needs Python (``Vm._plain``, no dirty tracking,
nothing posted) hands its wait to the kernel's one heap of sleepers in C
(``Vm._sleep_in_c``). When a sleeper is due and the kernel fires timers with a lane free
and nobody queued for one, C does what ``Vm._fast_wake`` would: the timer's bit and the
clock to the IDLE's out fields, the register page, one slice; a slice that ends in
another IDLE that waits, without entering Python, goes back on the heap with the timer
it armed, never seen by Python. Everything else is handed back to its VM
(``Vm._out_of_c``), which then handles it as the Python path would have.

Contract: while a VM sleeps in C its Python side is as it was when it went to sleep (in
IDLE, its coroutine waiting on the same future) except for what the sleeper cell holds
(the IDLE it waits in, both deadlines, its EIP and its counters); the VM takes itself
out of C (``Vm._leave_c``) before anything reads or changes more of it.

One per kernel, on the loop's thread; the kernel's timers fire it (``Timers.other``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from denali import _uc

if TYPE_CHECKING:
    from denali.arbiter import CpuArbiter
    from denali.timers import Timers
    from denali.vm import Vm

log = logging.getLogger(__name__)


class NativeSleep:
    """The sleepers of one kernel: their heap in C and the VMs they belong to."""

    __slots__ = ("_arbiter", "_epoch_ns", "_heap", "_slice_ns", "_timers", "_vms", "handed_back")

    def __init__(self, timers: Timers, arbiter: CpuArbiter, epoch_ns: int, slice_ns: int) -> None:
        self._heap = _uc.Sleepers()
        self._vms: dict[int, Vm] = {}
        self._timers = timers
        self._arbiter = arbiter
        self._epoch_ns = epoch_ns
        self._slice_ns = slice_ns
        self.handed_back = 0
        """Sleepers handed back to their VMs so far."""
        timers.other = self

    def __len__(self) -> int:
        return len(self._vms)

    def sleep(self, vm: Vm, cell: _uc.SleeperCell) -> bool:
        """Put ``vm``'s filled-in ``cell`` on the heap; False when C cannot take it (no
        deadline, or no memory)."""
        if not self._heap.sleep(cell):
            return False
        self._vms[cell.id] = vm
        self._timers.expect(cell.wake_at - self._epoch_ns)
        return True

    def unpark(self, cell: _uc.SleeperCell) -> bool:
        """Take ``cell`` off the heap (True), or mark it when its slice runs now (False: it
        is handed back once the slice ends)."""
        if not self._heap.unpark(cell):
            return False
        self._vms.pop(cell.id, None)
        return True

    # ---- Deadlines (denali.timers) ----
    def next_ns(self) -> int:
        n = self._heap.next_ns()
        return n - self._epoch_ns if n else 0

    def fire(self) -> bool:
        """Wake what is due: run in C while the timers' burst lasts (``fast_until``) on a
        lane nobody waits for, else handed back to be woken by Python."""
        if not self._vms:
            return False
        first = self._heap.next_ns()
        if not first or first > time.monotonic_ns():
            return False
        until = self._timers.fast_until
        lane = self._arbiter.take_free() if until else None
        try:
            if lane is not None:
                ids = self._heap.fire(lane.watchdog, lane.index, self._slice_ns, until, True)
            else:
                ids = self._heap.fire(0, 0, 0, 0, False)
        finally:
            if lane is not None:
                self._arbiter.release(lane)
        for i in ids:
            vm = self._vms.pop(i, None)
            if vm is not None:  # (not taken out meanwhile, by a callback of a later slice)
                self.handed_back += 1
                vm._out_of_c()
        return True

    def close(self) -> None:
        """Free the heap (every VM has left it: they end before the kernel closes this)."""
        if self._vms:
            log.debug("%d sleepers left at close", len(self._vms))
        self._timers.other = None
        self._heap.close()
