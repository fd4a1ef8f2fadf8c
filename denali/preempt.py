"""Slice preemption: one watchdog thread per kernel stops slices that outlive their bound.

Why a thread: Unicorn's ``count=`` costs ~10x guest speed and ``timeout=`` starts a
polling thread per slice (docs/performance.md, "The slice loop"). Instead the CPU that
runs a slice records (engine stop cell, deadline) in its ``Lane`` and runs the guest with
no bound at all; this thread sleeps until the earliest deadline and sets the stop flag
of every lane still running past it; the engine's block hook (``_preempt.c``) then stops
it at the next block start. It never calls ``uc_emu_stop`` itself: from another thread
that can land just after a guest memory access and make the engine repeat an
instruction. It sets the flag again every ``retry_ns`` until the slice ends. With no
slice starting for ``dormant_after_ns`` it sleeps on an event, so an idle kernel costs
no CPU.

Safety: a flag is only ever set with the lane lock held and while the lane says its
engine is running; ``end()`` takes the same lock, so an engine is never touched after
its slice ended (and may then be closed safely).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Final

from denali import _uc

log = logging.getLogger(__name__)

_RETRY_NS: Final = 100_000
_DORMANT_AFTER_NS: Final = 50_000_000


class Lane:
    """One CPU that runs slices; owned by the thread that runs them."""

    __slots__ = ("_owner", "deadline", "handle", "starts", "stops")

    def __init__(self, owner: Preemptor) -> None:
        self._owner = owner
        self.handle = 0
        self.deadline = 0
        self.starts = 0
        self.stops = 0
        """How many stops the watchdog issued on this lane (a measure of preemptions)."""

    def begin(self, handle: int, deadline_ns: int) -> None:
        """A slice starts now on the engine whose ``stop_cell`` is at ``handle`` and must
        end by ``deadline_ns`` (``time.monotonic_ns()`` clock, not the kernel's)."""
        owner = self._owner
        with owner.lock:
            self.handle = handle
            self.deadline = deadline_ns
            self.starts += 1
        if owner.dormant:
            owner.kick.set()

    def end(self) -> None:
        """The slice has returned; its engine will not be stopped any more."""
        with self._owner.lock:
            self.handle = 0


_fallback_logged = False


def _realtime_priority() -> None:
    """Ask for SCHED_FIFO for this thread so it wakes on time even when every core is
    busy; without the privilege (EPERM) it stays a normal thread, only less punctual
    (logged once per process)."""
    global _fallback_logged
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError) as exc:
        if not _fallback_logged:
            _fallback_logged = True
            log.warning(
                "the preemption thread runs without real-time priority (%s): slices "
                "may overrun their length when every core is busy",
                exc,
            )


class Preemptor:
    """The watchdog thread and its lanes. ``start()`` it, ``close()`` it."""

    def __init__(self, poll_ns: int = 500_000) -> None:
        """``poll_ns``: how often an active watchdog looks for a newly started slice;
        keep it at most half the slice so a slice is seen before its deadline."""
        self.poll = poll_ns / 1e9
        self.lock = threading.Lock()
        self.kick = threading.Event()
        self.dormant = False
        self.lanes: list[Lane] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    def new_lane(self) -> Lane:
        lane = Lane(self)
        self.lanes.append(lane)
        return lane

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="denali-preempt", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and wait for it; idempotent."""
        self._closed = True
        self.kick.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        _realtime_priority()
        mono = time.monotonic_ns
        last_starts = -1
        last_activity = mono()
        while not self._closed:
            now = mono()
            wake = 0
            starts = 0
            with self.lock:
                for lane in self.lanes:
                    starts += lane.starts
                    if lane.handle:
                        if now >= lane.deadline:
                            _uc.request_stop_at(lane.handle)
                            lane.stops += 1
                            due = now + _RETRY_NS
                        else:
                            due = lane.deadline
                        wake = due if not wake else min(wake, due)
            if starts != last_starts:
                last_starts = starts
                last_activity = now
            if wake:
                time.sleep(max(0, wake - mono()) / 1e9)
            elif now - last_activity > _DORMANT_AFTER_NS:
                self.dormant = True
                if not any(lane.handle for lane in self.lanes):
                    self.kick.wait()
                self.kick.clear()
                self.dormant = False
                last_activity = mono()
            else:
                time.sleep(self.poll)
