"""The kernel's timer heap (denali/timers.py): deadlines on one loop timer, never early,
never lost behind a later one."""

from __future__ import annotations

import asyncio
import time

from denali.timers import Timers


async def test_a_timer_added_by_a_callback_does_not_hide_an_earlier_one() -> None:
    """A callback that runs while the heap fires (as a VM's slice run inline does) may
    add a far deadline; the earlier one already waiting still fires on time."""
    loop = asyncio.get_running_loop()
    zero = time.monotonic_ns()
    timers = Timers(loop, lambda: time.monotonic_ns() - zero)
    fired: list[str] = []
    now = timers.clock()
    timers.add(now + 30_000_000, fired.append, "soon")
    timers.add(now + 1_000_000, lambda: timers.add(timers.clock() + 60_000_000_000, fired.append, "late"))
    await asyncio.sleep(0.3)
    assert fired == ["soon"]
    assert len(timers) == 1
    timers.close()


async def test_a_burst_fires_what_comes_due_while_it_runs() -> None:
    """With a burst length, one firing goes on with timers that came due meanwhile, and
    its callbacks see the burst's end; none runs before its deadline."""
    loop = asyncio.get_running_loop()
    zero = time.monotonic_ns()
    timers = Timers(loop, lambda: time.monotonic_ns() - zero)
    timers.burst_ns = 50_000_000
    seen: list[tuple[int, int, int]] = []

    def slow(deadline: int) -> None:
        seen.append((deadline, timers.clock(), timers.fast_until))
        time.sleep(0.002)  # work done inline: the next deadline comes due meanwhile

    now = timers.clock()
    for i in range(5):
        d = now + 5_000_000 + i * 1_000_000
        timers.add(d, slow, d)
    await asyncio.sleep(0.2)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen) and len(seen) == 5
    assert all(at >= d for d, at, _ in seen)
    assert all(until for _, _, until in seen) and len({until for _, _, until in seen}) < 5
    assert timers.fast_until == 0
    timers.close()


class _Other:
    """A second source of deadlines (``Timers.other``): each one fires once the clock
    reaches it, and says when."""

    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.pending: list[int] = []
        self.fired: list[tuple[int, int]] = []

    def add(self, deadline: int) -> None:
        self.pending.append(deadline)
        self.timers.expect(deadline)

    def next_ns(self) -> int:
        return min(self.pending, default=0)

    def fire(self) -> bool:
        now = self.timers.clock()
        due = sorted(d for d in self.pending if d <= now)
        for d in due:
            self.pending.remove(d)
            self.fired.append((d, now))
        return bool(due)


async def test_other_deadlines_share_the_loop_timer_never_early() -> None:
    """Deadlines of ``other`` fire on the same loop timer as the heap's, none early, the
    earlier of the two sources first, also one added while a far heap timer is armed."""
    loop = asyncio.get_running_loop()
    zero = time.monotonic_ns()
    timers = Timers(loop, lambda: time.monotonic_ns() - zero)
    other = _Other(timers)
    timers.other = other
    fired: list[str] = []
    now = timers.clock()
    timers.add(now + 60_000_000_000, fired.append, "far")
    other.add(now + 20_000_000)
    timers.add(now + 40_000_000, fired.append, "heap")
    other.add(now + 10_000_000)
    await asyncio.sleep(0.1)
    assert [d for d, _ in other.fired] == [now + 10_000_000, now + 20_000_000]
    assert all(at >= d for d, at in other.fired)
    assert fired == ["heap"] and not other.pending
    timers.close()
