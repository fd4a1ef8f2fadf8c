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

    __slots__ = ("_free", "_loop", "_waiters", "policy", "switches")

    def __init__(self, loop: asyncio.AbstractEventLoop, policy: Scheduler, lanes: list[Lane]) -> None:
        self._loop = loop
        self.policy = policy
        self._free = list(lanes)
        self._waiters: dict[int, asyncio.Future[Lane]] = {}
        self.switches = 0

    async def acquire(self, vm_id: int, idled: bool, group: int | None = None) -> tuple[Lane, bool]:
        """Wait for a lane; returns it and whether the caller had to wait (was suspended).
        ``group``: the VM's CPU group (``Scheduler.enqueue``)."""
        if self._free and not self.policy:
            return self._free.pop(), False
        fut: asyncio.Future[Lane] = self._loop.create_future()
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

    def release(self, lane: Lane) -> None:
        """Give ``lane`` back: to the next VM the policy picks, or to the free list."""
        while True:
            nxt = self.policy.pick()
            if nxt is None:
                self._free.append(lane)
                return
            fut = self._waiters.pop(nxt, None)
            if fut is not None and not fut.done():
                self.switches += 1
                fut.set_result(lane)
                return
