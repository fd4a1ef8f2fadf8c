"""Progress of a long boot (thousands of VMs) on stderr, for the CLI.

On a terminal: a live rich bar (VMs spawned and started, rate, elapsed). Elsewhere (a
log file, a pipe): one plain line per ``interval`` seconds and a last line at the end,
so the output stays readable. A VM counts as *started* once it ran its first slice or
ended; with a memory budget, spawned VMs wait for the gatekeeper before they start.
"""

from __future__ import annotations

import asyncio
import time
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from denali.vm import Vm


class BootProgress:
    """Tracks ``total`` VMs as they are handed to ``add``; ``run()`` shows it until every
    one started or ``close()`` is called."""

    def __init__(self, total: int, stream: IO[str], *, live: bool | None = None,
                 interval: float = 1.0) -> None:
        self.total = total
        self.vms: list[Vm] = []
        self._console = Console(file=stream, stderr=True)
        self._stream = stream
        self._live = self._console.is_terminal if live is None else live
        self._interval = interval
        self._t0 = time.monotonic()
        self._started_upto = 0
        self._stop = asyncio.Event()

    def add(self, vm: Vm) -> None:
        self.vms.append(vm)

    def started(self) -> int:
        """VMs that ran their first slice or ended (scans only the ones not yet counted)."""
        vms = self.vms
        i = self._started_upto
        while i < len(vms) and (vms[i].first_slice_ns is not None or vms[i].done):
            i += 1
        self._started_upto = i
        return i + sum(1 for vm in vms[i:] if vm.first_slice_ns is not None or vm.done)

    def line(self) -> str:
        started = self.started()
        dt = max(time.monotonic() - self._t0, 1e-9)
        return (f"denali: spawned {len(self.vms):,}/{self.total:,}, started {started:,}/{self.total:,} "
                f"({started / dt:,.0f} VMs/s, {dt:.1f} s)")

    def close(self) -> None:
        self._stop.set()

    def finished(self) -> bool:
        return self._stop.is_set() or (len(self.vms) == self.total and self.started() == self.total)

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
        cols = (TextColumn("[bold]{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
        with Progress(*cols, console=self._console, transient=False) as bar:
            sp = bar.add_task("spawned", total=self.total, rate="")
            st = bar.add_task("started", total=self.total, rate="")
            while True:
                started = self.started()
                dt = max(time.monotonic() - self._t0, 1e-9)
                bar.update(sp, completed=len(self.vms))
                bar.update(st, completed=started, rate=f"{started / dt:,.0f} VMs/s")
                if self.finished():
                    break
                try:
                    await asyncio.wait_for(self._stop.wait(), 0.2)
                except TimeoutError:
                    pass
