"""Slice preemption: one watchdog thread per kernel stops slices that outlive their bound.

Why a thread: Unicorn's ``count=`` costs ~10x guest speed and ``timeout=`` starts a
polling thread per slice (docs/performance.md, "The slice loop"). Instead the CPU that
runs a slice tells its ``Lane`` (engine stop cell, deadline) and runs the guest with no
bound at all; the watchdog sleeps until the earliest deadline and sets the stop flag of
every lane still running past it; the engine's block hook (``_preempt.c``) then stops
it at the next block start. It never calls ``uc_emu_stop`` itself: from another thread
that can land just after a guest memory access and make the engine repeat an
instruction. It sets the flag again every ``retry_ns`` until the slice ends. With no
slice starting for ``dormant_after_ns`` it sleeps on a condition variable, so an idle
kernel costs no CPU.

The thread is written in C (``_preempt.c``, 9.; ``_uc.Watchdog``): a Python one took the
GIL at every poll from the thread running slices, and every release of the GIL around a
slice then became a futex wake-up. The slice itself tells the watchdog that it starts
and ends (``Engine.run_slice``, under the watchdog's lock), so an engine is never
flagged after its slice ended and may then be closed safely.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from denali import _uc

log = logging.getLogger(__name__)

_RETRY_NS: Final = 100_000
_DORMANT_AFTER_NS: Final = 50_000_000

_fallback_logged = False


class Lane:
    """One CPU that runs slices (an index of its kernel's watchdog)."""

    __slots__ = ("_owner", "index", "watchdog")

    def __init__(self, owner: Preemptor, index: int) -> None:
        self._owner = owner
        self.index = index
        self.watchdog = owner.watchdog.address
        """The address ``Engine.run_slice`` is given (valid until the kernel closes)."""

    @property
    def starts(self) -> int:
        """Slices started on this lane."""
        return self._owner.watchdog.read(self.index)[0]

    @property
    def stops(self) -> int:
        """How many stops the watchdog issued on this lane (a measure of preemptions)."""
        return self._owner.watchdog.read(self.index)[1]


class Preemptor:
    """The watchdog thread and its lanes. ``start()`` it, ``close()`` it."""

    def __init__(self, poll_ns: int = 500_000) -> None:
        """``poll_ns``: how often an active watchdog looks for a newly started slice;
        keep it at most half the slice so a slice is seen before its deadline."""
        self.watchdog = _uc.Watchdog(poll_ns, _RETRY_NS, _DORMANT_AFTER_NS)
        self.lanes: list[Lane] = []

    def new_lane(self) -> Lane:
        lane = Lane(self, self.watchdog.add_lane())
        self.lanes.append(lane)
        return lane

    def start(self) -> None:
        """Start the thread. It asks for SCHED_FIFO so that it wakes on time even when every
        core is busy; without the privilege it stays a normal thread, only less punctual
        (logged once per process)."""
        global _fallback_logged
        self.watchdog.start()
        for _ in range(100):  # the thread says within microseconds
            rt = self.watchdog.read(0)[2]
            if rt:
                break
            time.sleep(0.0005)
        if rt < 0 and not _fallback_logged:
            _fallback_logged = True
            log.warning(
                "the preemption thread runs without real-time priority: slices may overrun "
                "their length when every core is busy"
            )

    def close(self) -> None:
        """Stop the thread and wait for it; idempotent. No slice may be running."""
        self.watchdog.close()
