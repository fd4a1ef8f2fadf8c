"""Ctrl-C and SIGTERM for a subcommand that owns an event loop: a clean stop, then a sure one.

``StopSignals`` blocks SIGINT and SIGTERM in the thread that enters it and in every
thread started afterwards (threads inherit the mask), and waits for them on a thread of
its own. So a signal is seen whatever the event loop or any other thread is blocked on
(a FIFO nobody opens or reads, a full pipe, a hung file system):

- the first signal calls the ``on_stop`` given to ``bind`` on the event loop (the
  subcommand then shuts down cleanly) and arms a deadline: if the process is still
  there ``grace_s`` later, it says so on stderr and ends at once (``os._exit(130)``);
  the work that was stuck (a write to a pipe nobody reads, say) is lost, as in a crash;
- a second signal ends it at once the same way (but the same signal again within half
  a second is taken for the first one delivered twice, as ``timeout`` does when it
  signals the process and then its process group).

Enter it before any other thread is started (the kernel's, the executor's): a thread
started earlier would take the signals itself. ``exit_now(status)`` is how a
subcommand that finished its clean shutdown leaves without waiting for threads still
stuck in a system call (the interpreter joins executor threads at exit, for ever).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from denali.cli.common import EXIT_INTERRUPTED

SHUTDOWN_GRACE_S: Final = 5.0
"""How long a clean shutdown may take after the first signal before the process ends anyway."""

_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM})
_ECHO_S: Final = 0.5
"""The same signal again within this many seconds is the first one delivered twice."""

log = logging.getLogger(__name__)


def _say(line: str) -> None:
    """One line to stderr without blocking: dropped when stderr is a pipe nobody reads."""
    try:
        _, ready, _ = select.select([], [2], [], 0)
        if ready:
            os.write(2, line.encode())
    except (OSError, ValueError):
        pass


class StopSignals:
    """SIGINT/SIGTERM handling for one run of a subcommand; see the module docstring."""

    def __init__(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self.grace_s = grace_s
        self.requested = False
        """True once a signal arrived."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_stop: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._old_mask: set[int | signal.Signals] | None = None

    def __enter__(self) -> StopSignals:
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        self._thread = threading.Thread(target=self._watch, name="denali-signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        thread, self._thread = self._thread, None
        if thread is not None and thread.ident is not None:
            self._closing = True
            signal.pthread_kill(thread.ident, signal.SIGINT)  # wakes its sigwait, nothing more
            thread.join()
        while signal.sigtimedwait(_SIGNALS, 0) is not None:  # arrived late: already handled
            pass
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    def bind(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        """Call ``on_stop()`` on ``loop`` at the first signal (at once if one already came)."""
        with self._lock:
            self._loop, self._on_stop = loop, on_stop
            late = self.requested
        if late:
            loop.call_soon(on_stop)

    def exit_now(self, status: int) -> None:
        """End the process with ``status`` now (after flushing what can be flushed)."""
        for stream in (sys.stderr, sys.stdout):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    # ---- the signal thread ----
    def _watch(self) -> None:
        first = signal.sigwait(_SIGNALS)
        if self._closing:
            return
        log.info("%s: stopping cleanly (a second signal stops at once)", signal.Signals(first).name)
        with self._lock:
            self.requested = True
            loop, on_stop = self._loop, self._on_stop
        if loop is not None and on_stop is not None:
            try:
                loop.call_soon_threadsafe(on_stop)
            except RuntimeError:  # the loop is closed: the subcommand is ending anyway
                pass
        first_at = time.monotonic()
        deadline = first_at + self.grace_s
        while True:
            left = deadline - time.monotonic()
            got = signal.sigtimedwait(_SIGNALS, max(left, 0)) if left > 0 else None
            if self._closing:
                return
            if got is not None and got.si_signo == first and time.monotonic() - first_at < _ECHO_S:
                continue  # the same request delivered twice (timeout(1) signals process and group)
            if got is not None:
                _say("denali: stopped at once (second signal)\n")
                os._exit(EXIT_INTERRUPTED)
            if time.monotonic() >= deadline:
                _say(f"denali: shutdown did not finish within {self.grace_s:g} s; stopped without it\n")
                os._exit(EXIT_INTERRUPTED)
