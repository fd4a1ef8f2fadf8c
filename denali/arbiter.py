"""Hands the kernel's emulation CPUs (lanes) to VM coroutines, one VM per lane at a time.

``acquire`` returns a lane the caller owns until it calls ``release(lane)``; when VMs
wait, ``release`` hands the lane straight to the VM the ``Scheduler`` picks, so a lane
never lapses while someone waits. With one lane the slices run on the event loop's
thread; with several, each slice runs on a worker thread of its own lane (Unicorn
releases the GIL while guest code runs), and every change to kernel state still happens
on the event loop.

Inline turns: with ``inline`` set (the kernel sets it for the native path on the loop's
thread), ``requeue`` (a VM that stays runnable: preempted, or a yield) may run right
there, one after the other, the turns the policy picks next, instead of waking each VM's
coroutine for a loop turn of its own: for as long as ``inline_until`` (a
``time.monotonic_ns()`` deadline one slice length after the loop last ran something)
allows, and only the turns of VMs that took them by staying runnable too (``_again``).
``release`` never runs a turn inline, and a VM that waits for its turn after waiting in
IDLE (or a fresh one) never has it run inline: a VM going to wait has that to do first
(arming its timer), and a woken VM's slice most likely ends in a wait its coroutine
handles anyway; woken a loop turn later, more of its input has arrived. The policy still
picks every turn, so fairness and the idle priority are the policy's. A turn run inline
ends in one of three ways: the VM is runnable again (``wait_again``: it waits on the same
future, in the normal queue), its coroutine is woken to handle the exit (the future's
result is None instead of a lane), or it is handed the lane after all (``inline`` said
False).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from denali.preempt import Lane
from denali.scheduler import Scheduler


class CpuArbiter:
    """The run queue in front of a fixed set of lanes."""

    __slots__ = (
        "_again",
        "_free",
        "_loop",
        "_requeued",
        "_waiters",
        "inline",
        "inline_until",
        "policy",
        "switches",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, policy: Scheduler, lanes: list[Lane]) -> None:
        self._loop = loop
        self.policy = policy
        self._free = list(lanes)
        self._waiters: dict[int, asyncio.Future[Lane | None]] = {}
        self._requeued: dict[int, asyncio.Future[Lane | None]] = {}
        """Turns taken by ``requeue``, until ``acquire`` or ``withdraw`` collects them."""
        self.switches = 0
        self.inline: Callable[[int, Lane, asyncio.Future[Lane | None]], bool] | None = None
        """Runs the turn of a waiting VM (its id, the lane, the future it waits on) inline:
        True if it did (the VM waits again or its future is done), False to hand it the
        lane instead. None: every turn wakes a coroutine."""
        self.inline_until = 0
        """Until when (``time.monotonic_ns()``) ``requeue`` may run turns inline; an inline
        slice never runs past it."""
        self._again: set[int] = set()
        """VMs waiting for a turn they took by staying runnable (``requeue``, ``wait_again``):
        the only turns run inline."""

    async def acquire(self, vm_id: int, idled: bool, group: int | None = None) -> tuple[Lane | None, bool]:
        """Wait for a lane; returns it and whether the caller had to wait (was suspended).
        ``group``: the VM's CPU group (``Scheduler.enqueue``). A VM that ``requeue``-d
        waits for the turn it took there instead (``idled`` and ``group`` are then unused).
        The lane is None when the turn ran inline and the VM has its exit to handle."""
        fut = self._requeued.pop(vm_id, None)
        if fut is None:
            lane = self.take_free()
            if lane is not None:
                return lane, False
            fut = self._loop.create_future()
            self._waiters[vm_id] = fut
            self.policy.enqueue(vm_id, idled, group)
        try:
            return await fut, True
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                lane = fut.result()
                if lane is not None:
                    self.release(lane)  # it was handed to us: pass it on
            else:
                self.policy.remove(vm_id)
                self._again.discard(vm_id)
                self._waiters.pop(vm_id, None)
            raise

    def take_free(self) -> Lane | None:
        """A free lane when nobody waits for one (the caller ``release``s it), else None."""
        if self._free and not self.policy.queued:
            return self._free.pop()
        return None

    def requeue(self, lane: Lane, vm_id: int, group: int | None = None) -> bool:
        """A preempted VM gives ``lane`` back and takes its next turn in one move: it goes
        to the back of the normal queue before the policy picks who runs (the caller
        again when nobody else waits). Without this, a preempted VM that gives its lane
        back and queues only later would find the lane free and the queue empty, and
        every VM would run in the event loop's order, CPU groups ignored. The caller
        then ``acquire``s (the turn) or ``withdraw``s. True when the lane went to another
        VM: the caller's ``acquire`` then suspends."""
        fut: asyncio.Future[Lane | None] = self._loop.create_future()
        self._waiters[vm_id] = fut
        self._requeued[vm_id] = fut
        self._again.add(vm_id)
        self.policy.enqueue(vm_id, False, group)
        self.release(lane, True)
        return not fut.done()

    def withdraw(self, vm_id: int) -> None:
        """Give up a turn ``requeue`` took (the VM pauses, is held or ends instead); the
        lane, if it was already handed to it, goes on to the next VM. No-op otherwise."""
        fut = self._requeued.pop(vm_id, None)
        if fut is None:
            return
        if fut.done():
            lane = fut.result()
            if lane is not None:
                self.release(lane)
        else:
            self.policy.remove(vm_id)
            self._again.discard(vm_id)
            self._waiters.pop(vm_id, None)

    def release(self, lane: Lane, inline: bool = False) -> bool:
        """Give ``lane`` back: to the next VM the policy picks, or to the free list. True
        when a VM took it (so a VM that ``acquire``s next, with every lane taken, waits).
        ``inline``: it may run turns inline first (``requeue`` only)."""
        while True:
            nxt = self.policy.pick()
            if nxt is None:
                self._free.append(lane)
                return False
            fut = self._waiters.pop(nxt, None)
            again = nxt in self._again
            if again:
                self._again.discard(nxt)
            if fut is not None and not fut.done():
                self.switches += 1
                run = self.inline
                if (
                    inline
                    and again
                    and run is not None
                    and time.monotonic_ns() < self.inline_until
                    and run(nxt, lane, fut)
                ):
                    continue  # its turn ran here: the next one
                fut.set_result(lane)
                return True

    def wait_again(self, vm_id: int, fut: asyncio.Future[Lane | None], group: int | None) -> None:
        """A turn run inline ended with the VM runnable: it waits for its next turn on the
        same future, at the back of the normal queue (as a VM that yielded does)."""
        self._waiters[vm_id] = fut
        self._again.add(vm_id)
        self.policy.enqueue(vm_id, False, group)
