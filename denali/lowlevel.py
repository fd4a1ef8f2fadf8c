"""Power-user access to a kernel's and a VM's internals: supported for tools, tests and
benchmarks, not promised to stay the same between versions (like trio's ``lowlevel``).

Everything here reads or hands out live internal objects; misuse can break the VM (for
example writing guest memory while its slice runs on a worker thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from denali.cpu import CpuState, VCpu
from denali.errors import ConfigError
from denali.hypercalls import HypercallTable
from denali.memory import GuestMemory
from denali.preempt import Lane
from denali.runtime import Runtime

if TYPE_CHECKING:
    from denali.kernel import Kernel
    from denali.vm import Vm

__all__ = (
    "CpuState",
    "GuestMemory",
    "HypercallTable",
    "Lane",
    "Runtime",
    "VCpu",
    "guest_memory",
    "hypercall_table",
    "lanes",
    "runtime",
    "swap_out",
    "swap_path",
    "vcpu",
)


def guest_memory(vm: Vm) -> GuestMemory:
    """The VM's memory; ``ConfigError`` while it is swapped out or not yet made."""
    mem = vm._memory
    if mem is None:
        raise ConfigError(f"VM {vm.id} is not resident")
    return mem


def vcpu(vm: Vm) -> VCpu:
    """The VM's CPU; ``ConfigError`` while it is swapped out or not yet made."""
    cpu = vm._cpu
    if cpu is None:
        raise ConfigError(f"VM {vm.id} is not resident")
    return cpu


async def swap_out(vm: Vm) -> bool:
    """Swap the VM out now if it is evictable (idle, no I/O in flight; needs a memory
    budget); True if it was. ``SwapError`` when its swap file cannot be written."""
    return await vm.evict()


def runtime(kernel: Kernel) -> Runtime:
    """What the kernel's VMs share (loop, timers, arbiter, table, swap)."""
    return kernel._runtime()


def hypercall_table(kernel: Kernel) -> HypercallTable:
    return kernel._table


def lanes(kernel: Kernel) -> list[Lane]:
    """The kernel's emulation CPUs (one per worker, or one)."""
    return list(kernel._lanes)


def swap_path(kernel: Kernel, vm: Vm) -> str:
    """Where the VM's swap file is; ``ConfigError`` without a memory budget."""
    store = kernel._store
    if store is None:
        raise ConfigError("the kernel has no memory budget, so no swap files")
    return store.path_for(vm.id)
