"""Configuration values: frozen dataclasses, validated at construction."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TypedDict

from denali import abi
from denali.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*$")
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str | int) -> int:
    """Bytes from "16M", "512K", "1G", "65536" (binary units); ``ConfigError`` if malformed."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"invalid size {text!r} (examples: 16M, 512K, 1G)")
    return int(m.group(1)) * _MULT[m.group(2).lower()]


def check_memory(size: int) -> int:
    """Validate a guest memory size; returns it."""
    if size % abi.PAGE_SIZE:
        raise ConfigError(f"memory size {size} is not a multiple of {abi.PAGE_SIZE}")
    if not abi.MIN_MEMORY <= size <= abi.MAX_MEMORY:
        raise ConfigError(f"memory size {size} is outside [{abi.MIN_MEMORY}, {abi.MAX_MEMORY}]")
    return size


@dataclass(frozen=True)
class KernelConfig:
    """How a ``Kernel`` runs.

    slice_us: the longest a VM runs before it is preempted (the event loop is never
        blocked longer than one slice).
    tcg_buffer: bytes of translated-code cache reserved per engine (committed as used).
    disable_thp: turn transparent huge pages off for this *process* (prctl), which keeps
        each engine's resident memory small; it affects the whole host program.
    max_vms: refuse spawns beyond this many live VMs.
    workers: 0 runs every slice on the event loop's thread; N >= 1 runs slices on N
        worker threads, so N VMs emulate at once on N cores (hypercalls then all exit
        emulation and are handled on the loop, which costs more per call).
    cpu_khz: the CPU-speed virtual register (0: read the host's).
    memory_budget: bytes of memory the resident VMs may use (charged as touched pages
        + ~1 MiB per engine, scaled up by what the process's resident memory really
        grew by); beyond it idle VMs are swapped out and runnable ones wait for
        admission in FIFO order. None: no swapping.
    swap_dir: where swap files go (default: a private temporary directory).
    max_engines: most VMs resident at once without swap (each live Unicorn engine holds
        ~5 kernel memory maps, and the process dies if maps run out): 0 means
        vm.max_map_count / 8. Without a memory budget a spawn beyond it raises
        ResourceError; with one, the gatekeeper keeps the rest swapped out.
    batch_interrupts: True (Denali): interrupts queue while a VM waits for the CPU and
        are delivered together when it next runs; the LAN forwards frames in bursts
        and the VMs they woke then run. False (synchronous delivery, for comparison):
        the LAN forwards one frame at a time and the VM it woke runs before the next
        frame moves, so every frame costs its receiver a wake-up of its own.
    mac_tag: second byte of the VMs' MAC addresses (02:TAG:<vm id>); default random, so
        that kernels joined into one LAN do not collide.
    id_start, id_step: the VM ids this kernel hands out are id_start, id_start + id_step,
        ... (default 1, 2, 3, ...). The kernels of one host (``denali.host``) take
        disjoint sequences (kernel j of N: j + 1 step N), so a VM keeps its id, and with
        it its MAC, wherever it moves among them.
    native: True (the default): the CPU's interrupt hook answers CLOCK, the hypercall
        guests make most, in C without entering Python, unless a monitor interposes on
        the VM's CLOCK other than to record it (``denali/_preempt.c``); False keeps
        every hypercall on the pure-Python path. The environment variable ``DENALI_NATIVE=0`` makes False the
        default (to run a test suite or a benchmark on the pure-Python path).
    """

    slice_us: int = 2000
    tcg_buffer: int = 16 << 20
    disable_thp: bool = True
    max_vms: int = 100_000
    cpu_khz: int = 0
    workers: int = 0
    memory_budget: int | None = None
    mac_tag: int | None = None
    max_engines: int = 0
    swap_dir: str | None = None
    batch_interrupts: bool = True
    id_start: int = 1
    id_step: int = 1
    native: bool = field(default_factory=lambda: os.environ.get("DENALI_NATIVE", "1").strip() != "0")

    def __post_init__(self) -> None:
        if not 50 <= self.slice_us <= 1_000_000:
            raise ConfigError(f"slice_us {self.slice_us} is outside [50, 1000000]")
        if not 1 << 20 <= self.tcg_buffer <= 1 << 30:
            raise ConfigError("tcg_buffer must be between 1 MiB and 1 GiB")
        if not 0 <= self.workers <= 64:
            raise ConfigError(f"workers {self.workers} is outside [0, 64]")
        if self.memory_budget is not None and self.memory_budget < 2 << 20:
            raise ConfigError("memory_budget must be at least 2 MiB")
        if self.max_engines < 0:
            raise ConfigError("max_engines must be >= 0")
        if self.mac_tag is not None and not 0 <= self.mac_tag <= 255:
            raise ConfigError("mac_tag must be a byte")
        if self.max_vms < 1:
            raise ConfigError("max_vms must be >= 1")
        if not 1 <= self.id_start <= 1 << 24 or not 1 <= self.id_step <= 1 << 16:
            raise ConfigError("id_start must be 1..2^24 and id_step 1..65536")


class KernelOptions(TypedDict, total=False):
    """The fields of ``KernelConfig`` as keyword options of ``Kernel(...)`` (typed)."""

    slice_us: int
    tcg_buffer: int
    disable_thp: bool
    max_vms: int
    cpu_khz: int
    workers: int
    memory_budget: int | None
    mac_tag: int | None
    max_engines: int
    swap_dir: str | None
    batch_interrupts: bool
    id_start: int
    id_step: int
    native: bool
