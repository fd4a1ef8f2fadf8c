"""Progress on stderr for commands that take more than a second (the CLI and tools only).

Both helpers follow one rule: on a terminal, a live rich bar; elsewhere (a log file, a
pipe), one plain line every ``interval`` seconds and a last line at the end, so the
output stays readable.

- ``JobProgress``: one job with a known total (bytes packed into a disk image, rounds
  of a benchmark; snapshots and migrations when they exist). Driven by ``update`` /
  ``advance`` calls from the job itself, cheap enough to call per megabyte; it shows
  nothing until ``delay`` seconds passed, so a job that ends quickly prints nothing.
- ``BootProgress``: VMs spawned and started during a long boot (thousands of VMs),
  driven by its own ``run()`` task that polls the VMs. A VM counts as *started* once
  it ran its first slice or ended; with a memory budget, spawned VMs wait for the
  gatekeeper before they start.

The library never uses these: it reports progress through callbacks (e.g.
``pack_directory(progress=...)``), and the caller decides how to show it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from denali.vm import Vm


def _size(n: float) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,.0f} B"


class JobProgress:
    """Progress of one job of ``total`` units (``unit="bytes"`` shows sizes and a rate;
    anything else is a count of that unit, e.g. "rounds"). Use as a context manager, or
    call ``close()``: it prints the last line (or stops the bar) if anything was shown.

    ``live``: None picks a bar when ``stream`` is a terminal. ``delay``: seconds before
    anything shows. ``interval``: seconds between plain lines. ``clock``: for tests.
    """

    def __init__(
        self,
        what: str,
        total: int,
        stream: IO[str],
        *,
        unit: str = "bytes",
        live: bool | None = None,
        interval: float = 1.0,
        delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.total = max(0, total)
        self.done = 0
        self.unit = unit
        self._stream = stream
        self._console = Console(file=stream, stderr=True)
        self._live = self._console.is_terminal if live is None else live
        self._interval = interval
        self._delay = delay
        self._clock = clock
        self._t0 = clock()
        self._last = -1e9
        self._last_done = -1
        self._shown = False
        self._closed = False
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def shown(self) -> bool:
        """Whether anything was written to the stream yet."""
        return self._shown

    def line(self) -> str:
        """The plain line for now: ``denali: packing x.img: 412.0 MiB/1.0 GiB (40%), 3.1 s``."""
        dt = max(self._clock() - self._t0, 1e-9)
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        if self.unit == "bytes":
            amount = f"{_size(self.done)}/{_size(self.total)}{pct}, {dt:.1f} s, {_size(self.done / dt)}/s"
        else:
            amount = f"{self.done:,}/{self.total:,} {self.unit}{pct}, {dt:.1f} s"
        return f"denali: {self.what}: {amount}"

    def update(self, done: int, total: int | None = None) -> None:
        """Set the units done so far (and the total, if it changed); shows when due."""
        self.done = done
        if total is not None:
            self.total = max(0, total)
        now = self._clock()
        if self._closed or now - self._t0 < self._delay:
            return
        if self._live:
            self._show_bar(now)
        elif now - self._last >= self._interval:
            self._write_line(now)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def _write_line(self, now: float) -> None:
        self._last = now
        self._last_done = self.done
        self._shown = True
        self._stream.write(self.line() + "\n")
        self._stream.flush()

    def _show_bar(self, now: float) -> None:
        if self._bar is None:
            amount = (
                (DownloadColumn(binary_units=True), TransferSpeedColumn())
                if self.unit == "bytes"
                else (MofNCompleteColumn(), TextColumn(self.unit))
            )
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                *amount,
                TimeElapsedColumn(),
                console=self._console,
                auto_refresh=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total or None)
            self._shown = True
        if now - self._last >= 0.1 or self.done >= self.total:
            assert self._task is not None
            self._last = now
            self._bar.update(self._task, completed=self.done, total=self.total or None)
            self._bar.refresh()

    def close(self) -> None:
        """End the display: the bar at its final state, or a last plain line (unless the
        last one shown already had the final count)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            assert self._task is not None
            self._bar.update(self._task, completed=self.done, total=self.total or None)
            self._bar.refresh()
            self._bar.stop()
        elif (self._shown and self._last_done != self.done) or (
            not self._shown and not self._live and self._clock() - self._t0 >= self._delay
        ):
            self._write_line(self._clock())


class BootCount:
    """VMs spawned and started of one boot, as they are handed to ``add``: the figures
    ``BootProgress`` shows (a member kernel of a host counts its share with one and tells
    the host, which shows the sum)."""

    def __init__(self) -> None:
        self.vms: list[Vm] = []
        self._started_upto = 0

    def add(self, vm: Vm) -> None:
        self.vms.append(vm)

    def counts(self) -> tuple[int, int]:
        """(spawned, started): started are the VMs that ran their first slice or ended
        (scans only the ones not yet counted)."""
        vms = self.vms
        i = self._started_upto
        while i < len(vms) and (vms[i].first_slice_ns is not None or vms[i].done):
            i += 1
        self._started_upto = i
        return len(vms), i + sum(1 for vm in vms[i:] if vm.first_slice_ns is not None or vm.done)


class BootProgress:
    """Shows ``total`` VMs spawned and started until every one started or ``close()`` is
    called; ``run()`` draws it. The figures come from ``counts()`` ((spawned, started)),
    by default those of the VMs handed to ``add``."""

    def __init__(
        self,
        total: int,
        stream: IO[str],
        *,
        live: bool | None = None,
        interval: float = 1.0,
        counts: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.total = total
        self._own = BootCount()
        self.counts = counts if counts is not None else self._own.counts
        self._console = Console(file=stream, stderr=True)
        self._stream = stream
        self._live = self._console.is_terminal if live is None else live
        self._interval = interval
        self._t0 = time.monotonic()
        self._stop = asyncio.Event()

    def add(self, vm: Vm) -> None:
        self._own.add(vm)

    def line(self) -> str:
        spawned, started = self.counts()
        dt = max(time.monotonic() - self._t0, 1e-9)
        return (
            f"denali: spawned {spawned:,}/{self.total:,}, started {started:,}/{self.total:,} "
            f"({started / dt:,.0f} VMs/s, {dt:.1f} s)"
        )

    def close(self) -> None:
        self._stop.set()

    def finished(self) -> bool:
        return self._stop.is_set() or self.counts() == (self.total, self.total)

    async def run(self) -> None:
        if self._live:
            await self._run_live()
        else:
            while not self.finished():
                try:
                    await asyncio.wait_for(self._stop.wait(), self._interval)
                except TimeoutError:
                    pass
                self._stream.write(self.line() + "\n")
                self._stream.flush()

    async def _run_live(self) -> None:
        cols = (
            TextColumn("[bold]{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
        )
        with Progress(*cols, console=self._console, transient=False) as bar:
            sp = bar.add_task("spawned", total=self.total, rate="")
            st = bar.add_task("started", total=self.total, rate="")
            while True:
                spawned, started = self.counts()
                dt = max(time.monotonic() - self._t0, 1e-9)
                bar.update(sp, completed=spawned)
                bar.update(st, completed=started, rate=f"{started / dt:,.0f} VMs/s")
                if self.finished():
                    break
                try:
                    await asyncio.wait_for(self._stop.wait(), 0.2)
                except TimeoutError:
                    pass
