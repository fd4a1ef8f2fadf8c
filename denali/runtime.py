"""What the VMs of one kernel share and need of it: the ``Runtime`` a kernel hands each VM.

A VM reaches its kernel only through this object (never through ``Kernel``): the loop,
the clock and timers, the CPU arbiter and worker pool, the hypercall table, swap, the
task owner and the few settings a slice needs.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from denali.arbiter import CpuArbiter
from denali.hypercalls import HypercallTable
from denali.swap import Gatekeeper, SwapStore
from denali.tasks import TaskOwner
from denali.timers import Timers

if TYPE_CHECKING:
    from denali.sleep import NativeSleep


@dataclass(eq=False, slots=True)
class Runtime:
    """Shared by every VM of a kernel; made by the kernel when it starts."""

    loop: asyncio.AbstractEventLoop
    epoch_ns: int
    """``time.monotonic_ns()`` at kernel time 0."""
    timers: Timers
    arbiter: CpuArbiter
    pool: Executor | None
    """Worker threads that run slices (None: slices run on the loop's thread)."""
    table: HypercallTable
    store: SwapStore | None
    gate: Gatekeeper | None
    """Swap area and gatekeeper (None without a memory budget)."""
    owner: TaskOwner
    slice_ns: int
    cpu_khz: int
    tcg_buffer: int
    native: bool
    """``KernelConfig.native``: CLOCK may be answered in the CPU's C hook."""
    sleep: NativeSleep | None = None
    """VMs' IDLE waits and their wake-ups in C (native, slices on the loop's thread)."""

    def now_ns(self) -> int:
        """The kernel's monotonic clock: ns since the kernel started."""
        return time.monotonic_ns() - self.epoch_ns
