"""The CPU scheduling policy: round-robin, with priority for VMs that idled (Denali).

Pure policy: no asyncio, no clocks, no VMs, only ids, so it is tested on its own. The
kernel's CPU arbiter asks ``pick()`` who runs next whenever a CPU frees up.

Rules:
- A VM becomes runnable with ``enqueue(vm_id, idled)``. ``idled=True`` means it is
  coming back from idle-with-timeout (or another wait); it goes to the priority queue,
  because a VM that gave up the CPU early deserves to run soon (Denali's rule that keeps
  latency low for I/O-bound VMs). Preempted VMs go to the back of the normal queue.
- ``pick()`` takes from the priority queue first, then the normal queue, FIFO in each.
- To keep the priority queue from starving the normal one, after ``burst`` priority
  picks in a row one normal VM is picked (if any waits).
- A VM is in at most one queue once; ``remove(vm_id)`` takes it out (VM stopped).
- CPU groups: the queues hold groups, not VMs. A VM enqueued with ``group=G`` joins
  G's runnable members; G takes one turn however many members wait, and after its turn
  goes to the back of the normal queue if members remain. A child VM is in its root
  ancestor's group, so one VM with 100 children gets one share, not 101. A VM without a
  group is a group of its own (the plain round-robin above).
"""

from __future__ import annotations

from collections import deque


class Scheduler:
    """Round-robin run queues of CPU groups with an idle-priority queue."""

    __slots__ = ("_burst", "_group_of", "_members", "_normal", "_prio", "_queued", "_streak")

    def __init__(self, burst: int = 8) -> None:
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self._prio: deque[int] = deque()
        self._normal: deque[int] = deque()
        """Groups with runnable members, in turn order."""
        self._members: dict[int, deque[int]] = {}
        """Runnable VMs of each queued group, in arrival order."""
        self._group_of: dict[int, int] = {}
        self._queued: set[int] = set()
        self._burst = burst
        self._streak = 0

    def enqueue(self, vm_id: int, idled: bool = False, group: int | None = None) -> None:
        """Make ``vm_id`` runnable; a VM already queued keeps its place. ``group`` (default:
        the VM's own id) is its CPU group: a group takes one turn in the queues however
        many of its VMs are runnable, and its VMs take that turn in order."""
        if vm_id in self._queued:
            return
        g = vm_id if group is None else group
        self._queued.add(vm_id)
        self._group_of[vm_id] = g
        members = self._members.get(g)
        if members is None:
            self._members[g] = deque((vm_id,))
            (self._prio if idled else self._normal).append(g)
        else:
            members.append(vm_id)

    def pick(self) -> int | None:
        """Remove and return the VM to run next, or None when none is runnable."""
        if self._prio and (self._streak < self._burst or not self._normal):
            g = self._prio.popleft()
            self._streak += 1
        elif self._normal:
            g = self._normal.popleft()
            self._streak = 0
        else:
            return None
        members = self._members[g]
        vm_id = members.popleft()
        if members:  # the group's other VMs wait for its next turn
            self._normal.append(g)
        else:
            del self._members[g]
        self._queued.discard(vm_id)
        del self._group_of[vm_id]
        return vm_id

    def remove(self, vm_id: int) -> bool:
        """Take ``vm_id`` out of whichever queue holds it; False if it was not queued."""
        if vm_id not in self._queued:
            return False
        self._queued.discard(vm_id)
        g = self._group_of.pop(vm_id)
        members = self._members[g]
        members.remove(vm_id)
        if not members:
            del self._members[g]
            for q in (self._prio, self._normal):
                try:
                    q.remove(g)
                    break
                except ValueError:
                    pass
        return True

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def queued(self) -> set[int]:
        """The runnable VMs (read only; its truth is whether any VM waits)."""
        return self._queued

    def __contains__(self, vm_id: object) -> bool:
        return vm_id in self._queued
