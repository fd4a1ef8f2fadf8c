"""Deadlines on the kernel clock, many of them on one event-loop timer.

Every VM's one-shot timer (``TIMER_SET``) and idle deadline (``IDLE``) is a ``Timer`` in
one kernel-wide heap; the loop holds a single timer handle, for the earliest deadline.
Adding, cancelling and firing cost a heap operation each, whatever the number of VMs.

Contract: a timer's callback never runs before the kernel clock has reached its
deadline. Event loops round timers (uvloop to whole milliseconds, against a loop time
cached at the start of an iteration), so a loop timer can go off early; when it does,
nothing is fired and the loop timer is armed again for what remains.

Bursts: with ``burst_ns`` set (the kernel sets one slice length), one firing keeps
firing what comes due while it runs, for at most ``burst_ns``, and its callbacks see
``fast_until``, the end of that budget: a VM woken by one may run its next slice inline
(``Vm._fast_wake``) until then, so the loop still gets control at least once per slice
length.

Other deadlines: a second source of deadlines (``other``: the VMs whose wake-ups run
in C, ``denali.sleep``) shares the loop timer. It says when its earliest is due
(``next_ns``, on the kernel clock) and fires what is due (``fire``) in the same bursts;
when it gains an earlier deadline it tells the timers (``expect``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

Clock = Callable[[], int]


class Deadlines(Protocol):
    """A second source of deadlines on the same loop timer (``Timers.other``)."""

    def next_ns(self) -> int:
        """Its earliest deadline on the kernel clock (ns); 0: none."""

    def fire(self) -> bool:
        """Fire what is due now (within ``Timers.fast_until`` if set); True if any was."""


class Timer:
    """One deadline; ``cancel()`` it to forget it (idempotent, also after it fired)."""

    __slots__ = ("_owner", "args", "callback", "cancelled", "deadline")

    def __init__(
        self, owner: Timers, deadline: int, callback: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self._owner = owner
        self.deadline = deadline
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._owner._cancelled_one()


class Timers:
    """The kernel's timer heap on ``loop``, reading deadlines on ``clock`` (ns)."""

    __slots__ = (
        "_armed",
        "_coarse",
        "_dead",
        "_handle",
        "_heap",
        "_loop",
        "_seq",
        "burst_ns",
        "clock",
        "early",
        "fast_until",
        "fired",
        "other",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self._loop = loop
        self.clock = clock
        self._heap: list[tuple[int, int, Timer]] = []
        """(deadline, sequence number, timer): compared in C, the timer never."""
        self._dead = 0
        """Cancelled timers still in the heap: past half of it, the heap is rebuilt, so
        a guest re-arming a far deadline forever cannot grow it."""
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0
        """Deadline the loop timer is armed for (0: none)."""
        self._coarse = type(loop).__module__.startswith("uvloop")
        """The loop keeps timers in whole milliseconds: round delays up, not to nearest."""
        self.fired = 0
        self.burst_ns = 0
        """How long one firing of due timers may let their callbacks run work inline (0:
        never): the callbacks see ``fast_until``, a ``time.monotonic_ns()`` deadline, set
        only while they run."""
        self.fast_until = 0
        self.early = 0
        """Loop timers that went off before their deadline (and were armed again)."""
        self.other: Deadlines | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline_ns: int, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` on the loop once the clock reads ``deadline_ns`` or later."""
        seq = next(self._seq)
        t = Timer(self, deadline_ns, callback, args)
        heap = self._heap
        heapq.heappush(heap, (deadline_ns, seq, t))
        # the earliest deadline, not this one: a callback of _run adds timers while
        # nothing is armed, and the heap may hold earlier ones
        if not self._armed:
            self._arm(self._first())
        elif deadline_ns < self._armed:
            self._arm(deadline_ns)
        return t

    def expect(self, deadline_ns: int) -> None:
        """``other`` gained a deadline (kernel clock): the loop timer goes off by then."""
        if not self._armed:
            self._arm(self._first())
        elif deadline_ns < self._armed:
            self._arm(deadline_ns)

    def _first(self) -> int:
        """The earliest deadline of the heap and of ``other`` (0: none)."""
        first = self._heap[0][0] if self._heap else 0
        other = self.other
        if other is not None:
            o = other.next_ns()
            if o and (not first or o < first):
                first = o
        return first

    def _arm(self, deadline: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        remaining = max(0, deadline - self.clock())
        delay = math.ceil(remaining / 1e6) / 1e3 if self._coarse else remaining / 1e9
        self._handle = self._loop.call_later(delay, self._run)
        self._armed = deadline

    def _run(self) -> None:
        self._handle = None
        self._armed = 0
        now = self.clock()
        due = False
        if self.burst_ns:  # the callbacks may run work inline, for one burst at most
            self.fast_until = time.monotonic_ns() + self.burst_ns
        other = self.other
        try:
            while True:
                due = self._fire_due(now) or due
                if other is not None:
                    due = other.fire() or due
                # timers that came due meanwhile fire in the same burst
                if not self.fast_until or time.monotonic_ns() >= self.fast_until:
                    break
                now = self.clock()
                first = self._first()
                if not first or first > now:
                    break
        finally:
            self.fast_until = 0
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
            self._dead -= 1
        first = self._first()
        if first:
            if not due and first > now:
                self.early += 1
            if not self._armed:
                self._arm(first)

    def _fire_due(self, now: int) -> bool:
        """Fire every timer due at ``now``; True if any was."""
        due = False
        # self._heap is read afresh each time: a callback may cancel timers, which can
        # rebuild the heap
        while self._heap and (self._heap[0][2].cancelled or self._heap[0][0] <= now):
            t = heapq.heappop(self._heap)[2]
            if t.cancelled:
                self._dead -= 1
                continue
            due = True
            t.cancelled = True
            self.fired += 1
            t.callback(*t.args)
        return due

    def _cancelled_one(self) -> None:
        self._dead += 1
        heap = self._heap
        if self._dead > 64 and self._dead * 2 > len(heap):
            self._heap = [e for e in heap if not e[2].cancelled]
            heapq.heapify(self._heap)
            self._dead = 0

    def close(self) -> None:
        """Forget every timer and the loop timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed = 0
        self._heap.clear()
        self._dead = 0
