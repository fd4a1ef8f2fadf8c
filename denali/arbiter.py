"""Hands the kernel's emulation CPUs (lanes) to VM coroutines, one VM per lane at a time.

``acquire`` returns a lane the caller owns until it calls ``release(lane)``; when VMs
wait, ``release`` hands the lane straight to the VM the ``Scheduler`` picks, so a lane
never lapses while someone waits. With one lane the slices run on the event loop's
thread; with several, each slice runs on a worker thread of its own lane (Unicorn
releases the GIL while guest code runs), and every change to kernel state still happens
on the event loop.
"""

from __future__ import annotations

import asyncio

from denali.preempt import Lane
from denali.scheduler import Scheduler


class CpuArbiter:
    """The run queue in front of a fixed set of lanes."""

    __slots__ = ("_free", "_loop", "_requeued", "_waiters", "policy", "switches")

    def __init__(self, loop: asyncio.AbstractEventLoop, policy: Scheduler, lanes: list[Lane]) -> None:
        self._loop = loop
        self.policy = policy
        self._free = list(lanes)
        self._waiters: dict[int, asyncio.Future[Lane]] = {}
        self._requeued: dict[int, asyncio.Future[Lane]] = {}
        """Turns taken by ``requeue``, until ``acquire`` or ``withdraw`` collects them."""
        self.switches = 0

    async def acquire(self, vm_id: int, idled: bool, group: int | None = None) -> tuple[Lane, bool]:
        """Wait for a lane; returns it and whether the caller had to wait (was suspended).
        ``group``: the VM's CPU group (``Scheduler.enqueue``). A VM that ``requeue``-d
        waits for the turn it took there instead (``idled`` and ``group`` are then unused)."""
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
                self.release(fut.result())  # it was handed to us: pass it on
            else:
                self.policy.remove(vm_id)
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
        fut: asyncio.Future[Lane] = self._loop.create_future()
        self._waiters[vm_id] = fut
        self._requeued[vm_id] = fut
        self.policy.enqueue(vm_id, False, group)
        self.release(lane)
        return not fut.done()

    def withdraw(self, vm_id: int) -> None:
        """Give up a turn ``requeue`` took (the VM pauses, is held or ends instead); the
        lane, if it was already handed to it, goes on to the next VM. No-op otherwise."""
        fut = self._requeued.pop(vm_id, None)
        if fut is None:
            return
        if fut.done():
            self.release(fut.result())
        else:
            self.policy.remove(vm_id)
            self._waiters.pop(vm_id, None)

    def release(self, lane: Lane) -> bool:
        """Give ``lane`` back: to the next VM the policy picks, or to the free list. True
        when a VM took it (so a VM that ``acquire``s next, with every lane taken, waits)."""
        while True:
            nxt = self.policy.pick()
            if nxt is None:
                self._free.append(lane)
                return False
            fut = self._waiters.pop(nxt, None)
            if fut is not None and not fut.done():
                self.switches += 1
                fut.set_result(lane)
                return True
