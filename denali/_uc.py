"""The only module that calls libunicorn: a thin, typed ctypes layer over its C API.

Why direct calls: the Python binding's wrappers cost about 3x more per call on the hot
path (``emu_start``, register access) and every engine with a Python hook sits in a
reference cycle (docs/architecture.md, "The CPU"). Here there are exactly three C callbacks for the
whole process (interrupt, TLB fill, invalid instruction); each engine registers them with
a small integer key as ``user_data`` and the callbacks find the engine's owner in
``_OWNERS``. Two hooks are written in C (``_preempt.c``, built by the install step): the
block hook that ends slices, and the interrupt hook in front of the Python one, which
applies the foreign-system-call route (``Engine.set_route``) without entering Python.
Nothing here knows about VMs: an owner is any object implementing ``EngineOwner``.

Contract: an ``Engine`` must be used from one thread at a time, except ``request_stop()``,
which any thread may call while ``start()`` runs (that is how slices are preempted: a
block hook in C, ``_preempt.c``, stops the engine at the next block start; calling
``uc_emu_stop`` from another thread can corrupt the guest, see that file).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import struct
import subprocess
import sysconfig
from pathlib import Path
from typing import Final, Protocol

from unicorn import unicorn_const as _c
from unicorn import x86_const as _x86
from unicorn.unicorn_py3.unicorn import uclib as _binding_lib

from denali.errors import ResourceError

TESTED_VERSION: Final = "2.1"
"""The libunicorn major.minor this layer is written and tested against (the structure
layouts and control codes below are those of 2.1.x)."""

# Our own handle on the library the installed unicorn package loaded (its path, not a
# guess), so the argument types set here never touch the binding's. CDLL releases the
# GIL for the duration of every call (emu_start runs guest code without it); callbacks
# re-take it.
_lib: Final = ctypes.CDLL(_binding_lib._name)

UC_ARCH_X86: Final = _c.UC_ARCH_X86
UC_MODE_32: Final = _c.UC_MODE_32
UC_HOOK_INTR: Final = _c.UC_HOOK_INTR
UC_HOOK_INSN: Final = _c.UC_HOOK_INSN
UC_HOOK_INSN_INVALID: Final = _c.UC_HOOK_INSN_INVALID
UC_HOOK_TLB_FILL: Final = _c.UC_HOOK_TLB_FILL
UC_HOOK_BLOCK: Final = _c.UC_HOOK_BLOCK
UC_TLB_VIRTUAL: Final = _c.UC_TLB_VIRTUAL
UC_PROT_ALL: Final = _c.UC_PROT_ALL
_CTL_TLB_TYPE: Final = _c.UC_CTL_TLB_TYPE
_CTL_TCG_BUFFER_SIZE: Final = _c.UC_CTL_TCG_BUFFER_SIZE
_CTL_TLB_FLUSH: Final = _c.UC_CTL_TLB_FLUSH
_CTL_IO_WRITE: Final = _c.UC_CTL_IO_WRITE
_CTL_TB_REMOVE_CACHE: Final = _c.UC_CTL_TB_REMOVE_CACHE
_CTL_TB_FLUSH: Final = _c.UC_CTL_TB_FLUSH

# uc_mem_type values seen by the TLB-fill hook
MEM_READ: Final = _c.UC_MEM_READ
MEM_WRITE: Final = _c.UC_MEM_WRITE
MEM_FETCH: Final = _c.UC_MEM_FETCH

UC_ERR_OK: Final = _c.UC_ERR_OK
UC_ERR_NOMEM: Final = _c.UC_ERR_NOMEM
UC_ERR_INSN_INVALID: Final = _c.UC_ERR_INSN_INVALID
UC_ERR_EXCEPTION: Final = _c.UC_ERR_EXCEPTION

REG_EAX: Final = _x86.UC_X86_REG_EAX
REG_EBX: Final = _x86.UC_X86_REG_EBX
REG_ECX: Final = _x86.UC_X86_REG_ECX
REG_EDX: Final = _x86.UC_X86_REG_EDX
REG_ESI: Final = _x86.UC_X86_REG_ESI
REG_EDI: Final = _x86.UC_X86_REG_EDI
REG_EBP: Final = _x86.UC_X86_REG_EBP
REG_ESP: Final = _x86.UC_X86_REG_ESP
REG_EIP: Final = _x86.UC_X86_REG_EIP
REG_EFLAGS: Final = _x86.UC_X86_REG_EFLAGS
REG_CS: Final = _x86.UC_X86_REG_CS
REG_SS: Final = _x86.UC_X86_REG_SS
REG_DS: Final = _x86.UC_X86_REG_DS
REG_ES: Final = _x86.UC_X86_REG_ES
REG_FS: Final = _x86.UC_X86_REG_FS
REG_GS: Final = _x86.UC_X86_REG_GS
REG_GDTR: Final = _x86.UC_X86_REG_GDTR

REG_FS_BASE: Final = _x86.UC_X86_REG_FS_BASE
REG_GS_BASE: Final = _x86.UC_X86_REG_GS_BASE

GPR_NAMES: Final = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags")
_GPR_IDS: Final = (
    REG_EAX,
    REG_EBX,
    REG_ECX,
    REG_EDX,
    REG_ESI,
    REG_EDI,
    REG_EBP,
    REG_ESP,
    REG_EIP,
    REG_EFLAGS,
)


_FPU_REGS: Final = (
    (_x86.UC_X86_REG_FPCW, 2),
    (_x86.UC_X86_REG_FPSW, 2),
    (_x86.UC_X86_REG_FPTAG, 2),
    *((getattr(_x86, f"UC_X86_REG_FP{i}"), 10) for i in range(8)),
    (_x86.UC_X86_REG_MXCSR, 4),
    *((getattr(_x86, f"UC_X86_REG_XMM{i}"), 16) for i in range(8)),
)
FPU_STATE_SIZE: Final = sum(n for _, n in _FPU_REGS)
"""Bytes of ``Engine.read_fpu()``: x87 control/status/tag words, ST0-7 (80 bits each),
MXCSR and XMM0-7, each little-endian, in that order."""


class _TlbEntry(ctypes.Structure):
    _fields_ = [("paddr", ctypes.c_uint64), ("perms", ctypes.c_int)]


class _Mmr(ctypes.Structure):
    _fields_ = [
        ("selector", ctypes.c_uint16),
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_TLB_CB = ctypes.CFUNCTYPE(
    ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.POINTER(_TlbEntry), ctypes.c_void_p
)
_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
)
_SYS_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_FORBIDDEN_INSNS: Final = (
    (_x86.UC_X86_INS_IN, "in"),
    (_x86.UC_X86_INS_OUT, "out"),
    (_x86.UC_X86_INS_SYSCALL, "syscall"),
    (_x86.UC_X86_INS_SYSENTER, "sysenter"),
)

_lib.uc_open.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
_lib.uc_close.argtypes = [ctypes.c_void_p]
_lib.uc_emu_start.argtypes = [
    ctypes.c_void_p,
    ctypes.c_uint64,
    ctypes.c_uint64,
    ctypes.c_uint64,
    ctypes.c_size_t,
]
_lib.uc_emu_stop.argtypes = [ctypes.c_void_p]
_lib.uc_reg_read.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_lib.uc_reg_write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_lib.uc_reg_read_batch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_lib.uc_mem_map_ptr.argtypes = [
    ctypes.c_void_p,
    ctypes.c_uint64,
    ctypes.c_size_t,
    ctypes.c_uint32,
    ctypes.c_void_p,
]
_lib.uc_strerror.argtypes = [ctypes.c_int]
_lib.uc_strerror.restype = ctypes.c_char_p
# uc_hook_add and uc_ctl are variadic: their arguments are passed with explicit types.

log = logging.getLogger(__name__)


def _load_preempt() -> ctypes.CDLL:
    """The block hook that stops a slice at a block start (``_preempt.c``: why it must
    exist). The install step builds it next to this module; a source tree without it
    (or with a stale one) gets it built here with the machine's C compiler."""
    src = Path(__file__).with_name("_preempt.c")
    lib = Path(__file__).with_name("_preempt" + (sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"))
    if not lib.exists() or (src.exists() and src.stat().st_mtime > lib.stat().st_mtime):
        if not src.exists():
            raise ResourceError(f"{lib} is missing: reinstall denali (pip install .)")
        cc = os.environ.get("CC", "cc")
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        try:
            subprocess.run(
                [cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", str(tmp), str(src)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            os.replace(tmp, lib)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ResourceError(
                f"cannot build {lib.name} with {cc} ({exc}): install a C compiler and reinstall denali"
            ) from None
        log.info("built %s", lib)
    return ctypes.CDLL(str(lib))


_preempt_lib: Final = _load_preempt()
_BLOCK_HOOK: Final = ctypes.cast(_preempt_lib.denali_block_hook, ctypes.c_void_p)
_INTR_HOOK: Final = ctypes.cast(_preempt_lib.denali_intr_hook, ctypes.c_void_p)
_EMU_STOP_ADDR: Final = ctypes.cast(_lib.uc_emu_stop, ctypes.c_void_p).value
_REG_READ_ADDR: Final = ctypes.cast(_lib.uc_reg_read, ctypes.c_void_p).value
_REG_WRITE_ADDR: Final = ctypes.cast(_lib.uc_reg_write, ctypes.c_void_p).value
_EMU_START_ADDR: Final = ctypes.cast(_lib.uc_emu_start, ctypes.c_void_p).value
_run = _preempt_lib.denali_run
_run.argtypes = [
    ctypes.c_void_p,
    ctypes.c_uint64,
    ctypes.c_uint64,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_uint32,
    ctypes.c_int64,
]
_run.restype = ctypes.c_int
_wd_new = _preempt_lib.denali_watchdog_new
_wd_new.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
_wd_new.restype = ctypes.c_void_p
_wd_add_lane = _preempt_lib.denali_watchdog_add_lane
_wd_add_lane.argtypes = [ctypes.c_void_p]
_wd_add_lane.restype = ctypes.c_int
_wd_start = _preempt_lib.denali_watchdog_start
_wd_start.argtypes = [ctypes.c_void_p]
_wd_start.restype = ctypes.c_int
_wd_free = _preempt_lib.denali_watchdog_free
_wd_free.argtypes = [ctypes.c_void_p]
_wd_free.restype = None
_wd_read = _preempt_lib.denali_watchdog_read
_wd_read.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_wd_read.restype = None


class Watchdog:
    """The preemption thread in C (``_preempt.c``, 9.): it sets the stop flag of every
    slice running past its deadline on one of its lanes. ``Engine.run_slice`` tells it
    when a slice starts and ends. Not thread-safe to ``close`` while a slice runs."""

    __slots__ = ("_w",)

    def __init__(self, poll_ns: int, retry_ns: int, dormant_after_ns: int) -> None:
        w = _wd_new(poll_ns, retry_ns, dormant_after_ns)
        if not w:
            raise ResourceError("cannot create the preemption watchdog: out of memory")
        self._w: int | None = w

    @property
    def address(self) -> int:
        if self._w is None:
            raise ResourceError("the preemption watchdog is closed")
        return self._w

    def add_lane(self) -> int:
        """A new lane's index (``ResourceError`` past 256)."""
        i = int(_wd_add_lane(self.address))
        if i < 0:
            raise ResourceError("at most 256 CPU lanes per kernel")
        return i

    def start(self) -> None:
        err = int(_wd_start(self.address))
        if err:
            raise ResourceError(f"cannot start the preemption thread: {os.strerror(err)}")

    def read(self, lane: int) -> tuple[int, int, int]:
        """(slices started on ``lane``, stops the watchdog issued there, real-time
        priority: 1 got it, -1 refused, 0 not tried yet)."""
        if self._w is None:
            return 0, 0, 0
        starts, stops, rt = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_int()
        _wd_read(self._w, lane, ctypes.byref(starts), ctypes.byref(stops), ctypes.byref(rt))
        return starts.value, stops.value, rt.value

    def close(self) -> None:
        """Stop the thread, wait for it and free it; idempotent."""
        w, self._w = self._w, None
        if w is not None:
            _wd_free(w)


_sl_new = _preempt_lib.denali_sleepers_new
_sl_new.argtypes = []
_sl_new.restype = ctypes.c_void_p
_sl_free = _preempt_lib.denali_sleepers_free
_sl_free.argtypes = [ctypes.c_void_p]
_sl_free.restype = None
_sl_sleep = _preempt_lib.denali_sleep
_sl_sleep.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_sl_sleep.restype = ctypes.c_int
_sl_unpark = _preempt_lib.denali_unpark
_sl_unpark.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_sl_unpark.restype = ctypes.c_int
_sl_next = _preempt_lib.denali_sleepers_next
_sl_next.argtypes = [ctypes.c_void_p]
_sl_next.restype = ctypes.c_int64
_sl_fire = _preempt_lib.denali_sleepers_fire
_sl_fire.argtypes = [
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_uint32,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_int,
]
_sl_fire.restype = ctypes.c_int
_sl_back = _preempt_lib.denali_sleepers_back
_sl_back.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
_sl_back.restype = ctypes.c_uint32

SLEEP_OFF: Final = 0
"""``SleeperCell.state``: not on the heap (its owner's)."""
BACK_DUE: Final = 1
"""``SleeperCell.why``: handed back when due, not run (its owner wakes it)."""
BACK_SLICE: Final = 2
"""``SleeperCell.why``: woken and run one slice, whose end is its owner's to handle."""
BACK_WAIT: Final = 3
"""``SleeperCell.why``: woken and run, it waits again in an IDLE with no deadline."""


class SleeperCell(ctypes.Structure):
    """One VM waiting in IDLE whose wake-ups C may run (``_preempt.c``, 12., ``struct
    denali_sleeper``). Its owner fills it before ``Sleepers.sleep`` and reads it back
    once it is off the heap."""

    _fields_ = [
        ("uc", ctypes.c_void_p),
        ("route", ctypes.c_void_p),
        ("cell", ctypes.c_void_p),
        ("id", ctypes.c_uint32),
        ("state", ctypes.c_uint32),
        ("heap_pos", ctypes.c_uint32),
        ("unpark", ctypes.c_uint32),
        ("idle_arg", ctypes.c_uint32),
        ("why", ctypes.c_uint32),
        ("idle_deadline", ctypes.c_uint64),
        ("timer_deadline", ctypes.c_uint64),
        ("wake_at", ctypes.c_int64),
        ("vregs", ctypes.c_uint32),
        ("irq_timer", ctypes.c_uint32),
        ("time_at", ctypes.c_uint32),
        ("tail_at", ctypes.c_uint32),
        ("cpu_khz", ctypes.c_uint32),
        ("err", ctypes.c_int32),
        ("page", ctypes.c_uint8 * 64),
        ("wakes", ctypes.c_uint64),
        ("irqs", ctypes.c_uint64),
        ("slices", ctypes.c_uint64),
        ("cpu_ns", ctypes.c_uint64),
        ("idles", ctypes.c_uint64),
    ]


class Sleepers:
    """The kernel's heap of sleepers in C (``_preempt.c``, 12.), on the loop's thread
    only. A cell stays valid while it is on the heap: take it off (``unpark``) before
    its engine closes."""

    __slots__ = ("_s",)

    def __init__(self) -> None:
        s = _sl_new()
        if not s:
            raise ResourceError("cannot create the sleepers' heap: out of memory")
        self._s: int | None = s

    def sleep(self, cell: SleeperCell) -> bool:
        """Put ``cell`` on the heap; False when it has no deadline or no memory was had."""
        return self._s is not None and _sl_sleep(self._s, ctypes.addressof(cell)) == 0

    def unpark(self, cell: SleeperCell) -> bool:
        """Take ``cell`` off the heap: True; False when its slice runs now (it is handed
        back when the slice ends)."""
        return self._s is None or _sl_unpark(self._s, ctypes.addressof(cell)) == 0

    def next_ns(self) -> int:
        """When the earliest sleeper is due (``time.monotonic_ns()``); 0: none sleeps."""
        return int(_sl_next(self._s)) if self._s is not None else 0

    def fire(self, watchdog: int, lane: int, slice_ns: int, until: int, run: bool) -> list[int]:
        """The ids of the sleepers handed back by firing what is due (``run``: woken and
        run on ``lane`` until ``until``, ``time.monotonic_ns()``)."""
        s = self._s
        if s is None:
            return []
        n = _sl_fire(s, watchdog, lane, slice_ns, until, 1 if run else 0)
        return [_sl_back(s, i) for i in range(n)]

    def close(self) -> None:
        """Free the heap (what it held is off it); idempotent."""
        s, self._s = self._s, None
        if s is not None:
            _sl_free(s)


class StopCell(ctypes.Structure):
    """Shared with the block hook: ``flag`` set means stop at the next block start."""

    _fields_ = [("flag", ctypes.c_int32), ("reserved", ctypes.c_int32), ("emu_stop", ctypes.c_void_p)]


CLOCK_PAGES: Final = 16
"""Pages the native clock remembers (``_preempt.c``, CLOCK_PAGES)."""
TX_BUFFER: Final = 32 << 10
"""Bytes of the native send's transmit buffer (``_preempt.c``, 4.): 21 full-size frames,
given to an engine at its first NET_SEND (most VMs never send)."""
CONSOLE_BUFFER: Final = 4 << 10
"""Bytes of the native console's buffer (``_preempt.c``, 11.), given at a VM's first
CONSOLE_WRITE (a longer write, or one that does not fit what is left, takes the Python
path)."""


class RouteCell(ctypes.Structure):
    """Shared with the interrupt hook (``_preempt.c``, ``struct denali_route``): where
    foreign system calls go, and the Python callback for every other interrupt."""

    _fields_ = [
        ("entry", ctypes.c_uint32),
        ("save", ctypes.c_uint32),
        ("code_lo", ctypes.c_uint32),
        ("code_hi", ctypes.c_uint32),
        ("faulted", ctypes.c_int32),
        ("eip_reg", ctypes.c_int32),
        ("routed", ctypes.c_uint64),
        ("mem", ctypes.c_void_p),
        ("mem_size", ctypes.c_uint64),
        ("reg_read", ctypes.c_void_p),
        ("reg_write", ctypes.c_void_p),
        ("fallback", ctypes.c_void_p),
        ("fallback_data", ctypes.c_void_p),
        ("vector", ctypes.c_uint32),
        ("clock_nr", ctypes.c_uint32),
        ("eax_reg", ctypes.c_int32),
        ("ebx_reg", ctypes.c_int32),
        ("clock_pages", ctypes.c_uint32 * CLOCK_PAGES),
        ("clock_zero", ctypes.c_int64),
        ("clocks", ctypes.c_uint64),
        ("log", ctypes.c_void_p),
        ("log_cap", ctypes.c_uint32),
        ("log_len", ctypes.c_uint32),
        ("send_nr", ctypes.c_uint32),
        ("tx_credit", ctypes.c_uint32),
        ("prot", ctypes.c_void_p),
        ("pages", ctypes.c_uint32),
        ("kfields_lo", ctypes.c_uint32),
        ("kfields_hi", ctypes.c_uint32),
        ("tx_buf", ctypes.c_void_p),
        ("tx_cap", ctypes.c_uint32),
        ("tx_len", ctypes.c_uint32),
        ("tx_frames", ctypes.c_uint32),
        ("tx_want", ctypes.c_uint32),
        ("sends", ctypes.c_uint64),
        ("hc_nr", ctypes.c_uint32),
        ("hc_arg", ctypes.c_uint32),
        ("hc_answer", ctypes.c_uint32),
        ("hc_result", ctypes.c_uint32),
        ("emu_start", ctypes.c_void_p),
        ("eax_pending", ctypes.c_uint32),
        ("eax_value", ctypes.c_uint32),
        ("eip", ctypes.c_uint32),
        ("work", ctypes.c_uint32),
        ("timer_nr", ctypes.c_uint32),
        ("timer_armed", ctypes.c_uint32),
        ("timer_deadline", ctypes.c_uint64),
        ("timers", ctypes.c_uint64),
        ("idle_nr", ctypes.c_uint32),
        ("idle_exit", ctypes.c_uint32),
        ("idles", ctypes.c_uint64),
        ("emu_stop", ctypes.c_void_p),
        ("calls", ctypes.c_void_p),
        ("calls_cap", ctypes.c_uint32),
        ("calls_len", ctypes.c_uint32),
        ("console_nr", ctypes.c_uint32),
        ("con_want", ctypes.c_uint32),
        ("con_buf", ctypes.c_void_p),
        ("con_cap", ctypes.c_uint32),
        ("con_len", ctypes.c_uint32),
        ("consoles", ctypes.c_uint64),
        ("idle_answers", ctypes.c_uint32),
        ("fallbacks", ctypes.c_uint32),
    ]


WORK_TX: Final = 1
"""``RouteCell.work``: frames wait in the transmit buffer, or the hook wants one."""
WORK_TIMER: Final = 2
"""``RouteCell.work``: the hook armed a timer (``take_timer``)."""
WORK_CONSOLE: Final = 4
"""``RouteCell.work``: bytes wait in the console buffer, or the hook wants one."""
CALL_RECORD: Final = struct.Struct("<IIq16s16s")
"""``struct denali_call_record``: nr, clock_pos, t, before, after (``_preempt.c``, 10.)."""
CallRecord = tuple[int, int, int, bytes, bytes]
"""(nr, CLOCKs logged before it, the VM's clock at the call, structure before, after)."""


_emu_start = _lib.uc_emu_start
_emu_stop = _lib.uc_emu_stop
_reg_read = _lib.uc_reg_read
_reg_write = _lib.uc_reg_write
_reg_read_batch = _lib.uc_reg_read_batch


class EngineOwner(Protocol):
    """What an engine's callbacks report to. Called on the thread running ``start()``."""

    def on_interrupt(self, intno: int) -> None:
        """An ``int n`` or a CPU exception (vector ``intno``) happened."""

    def on_tlb_fill(self, vaddr: int, access: int) -> int:
        """Return the permissions (UC_PROT bits) of the page at vaddr; 0 refuses it."""

    def on_invalid_insn(self) -> None:
        """The CPU met an instruction it cannot decode."""

    def on_forbidden_insn(self, name: str) -> None:
        """The guest executed an instruction denali does not support (in, out, syscall...)."""


_OWNERS: dict[int, EngineOwner] = {}
_next_key = 1


def _intr(_uc: int, intno: int, key: int) -> None:
    _OWNERS[key].on_interrupt(intno)


def _tlb(_uc: int, vaddr: int, access: int, result: ctypes._Pointer[_TlbEntry], key: int) -> bool:
    perms = _OWNERS[key].on_tlb_fill(vaddr, access)
    if not perms:
        return False
    entry = result.contents
    entry.paddr = vaddr & ~0xFFF
    entry.perms = perms
    return True


def _insn(_uc: int, key: int) -> bool:
    _OWNERS[key].on_invalid_insn()
    return False


def _in(_uc: int, _port: int, _size: int, key: int) -> int:
    _OWNERS[key].on_forbidden_insn("in")
    return 0


def _out(_uc: int, _port: int, _size: int, _value: int, key: int) -> None:
    _OWNERS[key].on_forbidden_insn("out")


def _syscall(_uc: int, key: int) -> None:
    _OWNERS[key].on_forbidden_insn("syscall")


def _sysenter(_uc: int, key: int) -> None:
    _OWNERS[key].on_forbidden_insn("sysenter")


# The C function pointers live as long as the module: Unicorn keeps calling them.
_insn_hooks: Final = {
    "in": _IN_CB(_in),
    "out": _OUT_CB(_out),
    "syscall": _SYS_CB(_syscall),
    "sysenter": _SYS_CB(_sysenter),
}
_intr_hook = _INTR_CB(_intr)
_tlb_hook = _TLB_CB(_tlb)
_insn_hook = _INSN_CB(_insn)


def strerror(code: int) -> str:
    """Unicorn's message for an error code."""
    msg = _lib.uc_strerror(code)
    return msg.decode() if msg else f"unicorn error {code}"


def _desc(base: int, limit: int, access: int) -> bytes:
    """One 8-byte segment descriptor, 4 KiB granularity, 32-bit."""
    return bytes(
        (
            limit & 0xFF,
            (limit >> 8) & 0xFF,
            base & 0xFF,
            (base >> 8) & 0xFF,
            (base >> 16) & 0xFF,
            access,
            0xC0 | ((limit >> 16) & 0xF),
            (base >> 24) & 0xFF,
        )
    )


TLS_ENTRIES: Final = (6, 7, 8)
"""GDT entries kept for thread-local-storage descriptors (Linux's numbers). They are
part of the CPU state (saved and restored with it); all zero (not present) by default."""
TLS_SIZE: Final = 8 * len(TLS_ENTRIES)
GDT: Final = (
    bytes(8)
    + _desc(0, 0xFFFFF, 0x9A)
    + _desc(0, 0xFFFFF, 0x92)
    + _desc(0, 0xFFFFF, 0xFA)
    + _desc(0, 0xFFFFF, 0xF2)
    + bytes(8)
)
"""Null, kernel code/data (DPL 0), user code/data (DPL 3), a null entry; the TLS
entries follow (``GDT_SIZE`` bytes in all)."""
GDT_SIZE: Final = len(GDT) + TLS_SIZE


def tls_descriptor(base: int, limit: int, pages: bool) -> bytes:
    """A DPL 3 read/write 32-bit data segment descriptor for a TLS entry (SET_TLS):
    ``limit`` in pages when ``pages``, else in bytes. Marked accessed already, or the CPU
    would set that bit in the GDT, which lives in a page the guest cannot write."""
    d = bytearray(_desc(base, limit, 0xF3))
    if not pages:
        d[6] &= 0x7F  # byte granularity
    return bytes(d)


KERNEL_CS: Final = 0x08
KERNEL_DS: Final = 0x10
USER_CS: Final = 0x18 | 3
USER_DS: Final = 0x20 | 3


class Engine:
    """One Unicorn x86-32 engine whose memory is a caller-owned buffer.

    The TLB runs in virtual mode: every page's permissions come from the owner's
    ``on_tlb_fill`` (so code is R-X, data RW-, and unmapped pages fault), which is what
    keeps guest stores on Unicorn's fast path. Raises ``ResourceError`` when Unicorn
    cannot create or map the engine.
    """

    __slots__ = (
        "_batch_ids",
        "_batch_vals",
        "_calls",
        "_cell",
        "_clock_next",
        "_con",
        "_h",
        "_hooks",
        "_key",
        "_log",
        "_route",
        "_route_addr",
        "_tx",
        "_u32",
        "_u32ref",
        "_wide",
        "closed",
        "stop_cell",
    )

    def __init__(self, owner: EngineOwner, mem_addr: int, mem_size: int, tcg_buffer: int) -> None:
        global _next_key
        h = ctypes.c_void_p()
        err = _lib.uc_open(UC_ARCH_X86, UC_MODE_32, ctypes.byref(h))
        if err:
            raise ResourceError(f"cannot create a Unicorn engine: {strerror(err)}")
        self._h = h
        self.closed = False
        self._hooks: list[ctypes.c_size_t] = []
        self._u32 = ctypes.c_uint32()
        self._u32ref = ctypes.byref(self._u32)
        self._wide = ctypes.create_string_buffer(64)
        self._cell = StopCell(0, 0, _EMU_STOP_ADDR)
        self._clock_next = 0
        self._log: ctypes.Array[ctypes.c_int64] | None = None
        self._calls: ctypes.Array[ctypes.c_char] | None = None
        self._tx: ctypes.Array[ctypes.c_char] | None = None
        self._con: ctypes.Array[ctypes.c_char] | None = None
        self.stop_cell = ctypes.addressof(self._cell)
        """Address of this engine's ``StopCell`` (the watchdog sets its flag)."""
        self._route = RouteCell(
            0,
            0,
            0,
            0,
            0,
            REG_EIP,
            0,
            mem_addr,
            mem_size,
            _REG_READ_ADDR,
            _REG_WRITE_ADDR,
            ctypes.cast(_intr_hook, ctypes.c_void_p).value,
            0,
            0,
            0,
            REG_EAX,
            REG_EBX,
        )
        ids = _GPR_IDS
        self._batch_ids = (ctypes.c_int * len(ids))(*ids)
        vals = [ctypes.c_uint32() for _ in ids]
        self._batch_vals = (vals, (ctypes.c_void_p * len(ids))(*[ctypes.addressof(v) for v in vals]))
        try:
            self._ctl(_CTL_TCG_BUFFER_SIZE, ctypes.c_uint32(tcg_buffer))
            self._ctl(_CTL_TLB_TYPE, ctypes.c_int(UC_TLB_VIRTUAL))
            err = _lib.uc_mem_map_ptr(h, 0, mem_size, UC_PROT_ALL, mem_addr)
            if err:
                raise ResourceError(f"cannot map {mem_size} bytes of guest memory: {strerror(err)}")
        except BaseException:
            self.close()
            raise
        self._key = _next_key
        _next_key += 1
        _OWNERS[self._key] = owner
        self._route.fallback_data = self._key
        self._route.emu_start = _EMU_START_ADDR
        self._route.emu_stop = _EMU_STOP_ADDR
        self._route_addr = ctypes.addressof(self._route)

    def _ctl(self, ctl: int, *args: object) -> None:
        code = ctl | (len(args) << 26) | (_CTL_IO_WRITE << 30)
        err = _lib.uc_ctl(self._h, ctypes.c_int(code), *args)
        if err:
            raise ResourceError(f"uc_ctl({ctl}) failed: {strerror(err)}")

    def enter_user_mode(self, kernel_page: int, stack: int, fs: int = KERNEL_DS, gs: int = KERNEL_DS) -> None:
        """Prepare the first ``start()``: GDT at ``kernel_page``, kernel SS:ESP at ``stack``.

        The caller has written ``GDT`` (and the TLS entries) at kernel_page and an
        ``iret`` frame (entry, USER_CS, eflags, user_sp, USER_DS) at ``stack``; starting
        at the trampoline's ``iret`` drops to CPL 3. ``fs``/``gs``: selectors to load (a
        VM resuming with TLS). Must run before ``install_hooks`` (segment loads with the
        TLB hook installed crash Unicorn outside emulation).
        """
        gdtr = _Mmr(0, kernel_page, GDT_SIZE - 1, 0)
        self._check(_reg_write(self._h, REG_GDTR, ctypes.byref(gdtr)), "GDTR")
        for reg, val in (
            (REG_SS, KERNEL_DS),
            (REG_DS, KERNEL_DS),
            (REG_ES, KERNEL_DS),
            (REG_FS, fs),
            (REG_GS, gs),
            (REG_CS, KERNEL_CS),
            (REG_ESP, stack),
        ):
            self.reg_write(reg, val)

    def install_hooks(self) -> None:
        """Register the process-wide callbacks for this engine, the block hook that ends
        slices (``request_stop``) and the interrupt hook that routes foreign system calls
        (``set_route``) and hands every other interrupt to the owner (both in C)."""
        for kind, hook, data in (
            (UC_HOOK_BLOCK, _BLOCK_HOOK, self.stop_cell),
            (UC_HOOK_INTR, _INTR_HOOK, ctypes.addressof(self._route)),
        ):
            hh = ctypes.c_size_t()
            err = _lib.uc_hook_add(
                self._h,
                ctypes.byref(hh),
                ctypes.c_int(kind),
                hook,
                ctypes.c_void_p(data),
                ctypes.c_uint64(1),
                ctypes.c_uint64(0),
            )
            self._check(err, "C hook")
            self._hooks.append(hh)
        for kind, cb, begin, end in (
            (UC_HOOK_TLB_FILL, _tlb_hook, 1, 0),
            (UC_HOOK_INSN_INVALID, _insn_hook, 1, 0),
        ):
            hh = ctypes.c_size_t()
            err = _lib.uc_hook_add(
                self._h,
                ctypes.byref(hh),
                ctypes.c_int(kind),
                cb,
                ctypes.c_void_p(self._key),
                ctypes.c_uint64(begin),
                ctypes.c_uint64(end),
            )
            self._check(err, "hook")
            self._hooks.append(hh)
        for insn, name in _FORBIDDEN_INSNS:
            hh = ctypes.c_size_t()
            err = _lib.uc_hook_add(
                self._h,
                ctypes.byref(hh),
                ctypes.c_int(UC_HOOK_INSN),
                _insn_hooks[name],
                ctypes.c_void_p(self._key),
                ctypes.c_uint64(1),
                ctypes.c_uint64(0),
                ctypes.c_int(insn),
            )
            self._check(err, f"{name} hook")
            self._hooks.append(hh)

    @staticmethod
    def _check(err: int, what: str) -> None:
        if err:
            raise ResourceError(f"unicorn {what}: {strerror(err)}")

    @property
    def handle(self) -> int:
        """The raw ``uc_engine*``."""
        return self._h.value or 0

    def flush_tlb(self) -> None:
        """Drop every TLB entry: the next access to each page asks the TLB-fill hook again
        (dirty-page tracking uses it to write-protect pages at each round; memory
        protection after a page lost a permission). Callable from a hook. The native
        clock's page is forgotten too (``allow_clock_page``)."""
        self._forget_clock_pages()
        self._ctl(_CTL_TLB_FLUSH)

    def _forget_clock_pages(self) -> None:
        pages = self._route.clock_pages
        ctypes.memset(ctypes.addressof(pages), 0, ctypes.sizeof(pages))

    def set_native_clock(self, vector: int, nr: int, clock_zero: int) -> None:
        """Let the interrupt hook answer hypercall ``nr`` (CLOCK, ``int vector`` with
        EAX = ``nr``, EBX its structure, one u64) itself: the structure gets
        CLOCK_MONOTONIC - ``clock_zero`` (ns) and EAX gets 0 (OK), on the pages
        ``allow_clock_page`` names. ``nr`` 0: never (every hypercall goes to the owner).
        Between slices, or from a callback."""
        r = self._route
        r.vector, r.clock_nr, r.clock_zero = vector, nr, clock_zero
        if not nr:
            self._forget_clock_pages()

    def allow_clock_page(self, page: int) -> None:
        """A page (number) on which the native clock may write its structure, which the
        caller found writable for the guest; it replaces the oldest of the
        ``CLOCK_PAGES`` remembered. ``flush_tlb`` forgets them all."""
        pages = self._route.clock_pages
        if page + 1 in pages:
            return
        pages[self._clock_next] = page + 1
        self._clock_next = (self._clock_next + 1) % CLOCK_PAGES

    def set_clock_log(self, capacity: int) -> None:
        """Make the native clock append each value it answers to a log of ``capacity``
        entries (0: no log). A log of another capacity, or none, discards what the log
        held (``take_clock_log`` first); the same capacity keeps it. A full log sends
        CLOCK to the owner. Between slices, or from a callback."""
        r = self._route
        if capacity and self._log is not None and len(self._log) == capacity:
            return
        if capacity:
            self._log = (ctypes.c_int64 * capacity)()
            r.log, r.log_cap = ctypes.addressof(self._log), capacity
        else:
            r.log, r.log_cap, self._log = None, 0, None
        r.log_len = 0

    def take_clock_log(self) -> list[int]:
        """The values the native clock logged since the last call, oldest first (the log
        is emptied). On the thread that runs this engine's slices, between them or from
        a callback."""
        r = self._route
        n = r.log_len
        if not n or self._log is None:
            return []
        r.log_len = 0
        return self._log[:n]

    def set_call_log(self, capacity: int) -> None:
        """Make the native NET_SEND and TIMER_SET append a record of each call they
        answer to a log of ``capacity`` records (0: no log; as ``set_clock_log``: the same
        capacity keeps what it holds, another drops it; a full log sends them to the
        owner). Between slices, or from a callback."""
        r = self._route
        if capacity and self._calls is not None and len(self._calls) == capacity * CALL_RECORD.size:
            return
        if capacity:
            self._calls = ctypes.create_string_buffer(capacity * CALL_RECORD.size)
            r.calls, r.calls_cap = ctypes.addressof(self._calls), capacity
        else:
            r.calls, r.calls_cap, self._calls = None, 0, None
        r.calls_len = 0

    def take_logs(self) -> tuple[list[int], list[CallRecord]]:
        """What the clock log and the call log hold, oldest first, both emptied in one
        move (a record's clock position indexes the first list). Where ``take_clock_log``
        may be called."""
        clocks = self.take_clock_log()
        r = self._route
        n = r.calls_len
        if not n or self._calls is None:
            return clocks, []
        r.calls_len = 0
        data = ctypes.string_at(r.calls, n * CALL_RECORD.size)
        return clocks, list(CALL_RECORD.iter_unpack(data))

    @property
    def native_clocks(self) -> int:
        """CLOCK hypercalls the interrupt hook answered so far."""
        return int(self._route.clocks)

    # ---- the native send (_preempt.c, 4.) ----
    def set_page_map(self, prot_map: int, pages: int, kernel_fields: tuple[int, int]) -> None:
        """The page-permission map the interrupt hook checks guest pointers against (at
        ``prot_map``, ``pages`` bytes, alive while the engine is), and the range it never
        writes for the guest (``kernel_fields``, [lo, hi)). Once, before any slice."""
        r = self._route
        r.prot, r.pages = prot_map, pages
        r.kfields_lo, r.kfields_hi = kernel_fields

    def set_native_send(self, nr: int) -> None:
        """Let the interrupt hook answer hypercall ``nr`` (NET_SEND; 0: never) itself (the
        page map set). The frames it takes wait in the transmit buffer for
        ``take_frames``: take them before turning this off. Between slices, or from a
        callback."""
        r = self._route
        r.send_nr = nr
        r.tx_credit = 0  # until the owner learns the room again (its Python path does)

    def set_tx_credit(self, frames: int) -> None:
        """Frames the native send may still take before it sends NET_SEND to the owner
        (the room left in the port's queue). Between slices, or from a callback."""
        self._route.tx_credit = max(0, frames)

    def tx_wanted(self) -> bool:
        """The native send met a NET_SEND with no transmit buffer yet (``give_tx_buffer``)."""
        return bool(self._route.tx_want)

    def give_tx_buffer(self) -> None:
        """Give the native send its transmit buffer (``TX_BUFFER`` bytes; idempotent)."""
        r = self._route
        r.tx_want = 0
        if self._tx is None:
            self._tx = ctypes.create_string_buffer(TX_BUFFER)
            r.tx_buf, r.tx_cap, r.tx_len, r.tx_frames = ctypes.addressof(self._tx), TX_BUFFER, 0, 0

    # ---- the native console (_preempt.c, 11.) ----
    def set_native_console(self, nr: int) -> None:
        """Let the interrupt hook answer hypercall ``nr`` (CONSOLE_WRITE; 0: never) itself
        (the page map set); the bytes wait in the console buffer for ``take_console``:
        take them before turning this off. Between slices."""
        self._route.console_nr = nr

    def give_console_buffer(self) -> None:
        """Give the native console its buffer if a write asked for one (idempotent)."""
        r = self._route
        if r.con_want and self._con is None:
            self._con = ctypes.create_string_buffer(CONSOLE_BUFFER)
            r.con_buf, r.con_cap, r.con_len = ctypes.addressof(self._con), CONSOLE_BUFFER, 0
        r.con_want = 0

    def take_console(self) -> bytes:
        """The bytes the native console took since the last call, in order (emptied)."""
        r = self._route
        n = r.con_len
        if not n:
            return b""
        r.con_len = 0
        return ctypes.string_at(r.con_buf, n)

    @property
    def native_consoles(self) -> int:
        """CONSOLE_WRITE hypercalls the interrupt hook answered so far."""
        return int(self._route.consoles)

    def tx_pending(self) -> int:
        """Frames the native send holds in its buffer."""
        return int(self._route.tx_frames)

    def take_frames(self) -> list[bytes]:
        """The frames the native send took since the last call, oldest first (the buffer
        is emptied). On the thread that runs this engine's slices, between them or from
        a callback."""
        r = self._route
        if not r.tx_frames:
            return []
        data = ctypes.string_at(r.tx_buf, r.tx_len)
        r.tx_len = r.tx_frames = 0
        out = []
        at, end = 0, len(data)
        while at < end:
            n = data[at] | data[at + 1] << 8
            out.append(data[at + 2 : at + 2 + n])
            at += 2 + n
        return out

    @property
    def native_sends(self) -> int:
        """NET_SEND hypercalls the interrupt hook answered so far."""
        return int(self._route.sends)

    # ---- the native timer (_preempt.c, 7.) ----
    def set_native_timer(self, nr: int) -> None:
        """Let the interrupt hook answer hypercall ``nr`` (TIMER_SET; 0: never), keeping
        the deadline for ``take_timer``: take it before turning this off."""
        self._route.timer_nr = nr

    def take_timer(self) -> int | None:
        """The deadline the last TIMER_SET answered in the hook armed (0: disarmed), or
        None when none was since the last call."""
        r = self._route
        if not r.timer_armed:
            return None
        r.timer_armed = 0
        return int(r.timer_deadline)

    # ---- the native IDLE exit (_preempt.c, 8.) ----
    def set_native_idle(self, nr: int, answers: bool = False) -> None:
        """Let the interrupt hook end the slice at hypercall ``nr`` (IDLE; 0: never) itself;
        it then sets the route's ``idle_exit`` with the call in ``hc_nr``/``hc_arg``
        (``answers``: 2 for an IDLE whose deadline passed, its out fields written as if
        no interrupt were pending)."""
        r = self._route
        r.idle_nr = nr
        r.idle_answers = 1 if nr and answers else 0

    @property
    def native_idles(self) -> int:
        """IDLE hypercalls whose exit the interrupt hook took so far."""
        return int(self._route.idles)

    @property
    def native_timers(self) -> int:
        """TIMER_SET hypercalls the interrupt hook answered so far."""
        return int(self._route.timers)

    def request_stop(self) -> None:
        """Ask a running ``start()`` to return at the next block start (any thread)."""
        self._cell.flag = 1

    def set_route(self, entry: int, save: int, code_lo: int, code_hi: int) -> None:
        """Route an ``int $0x80`` outside [code_lo, code_hi) to ``entry``, its resume EIP
        stored at ``save`` (4 bytes inside guest memory; entry 0: no routing). Between
        slices, or from one of this engine's callbacks."""
        r = self._route
        if entry and save + 4 > r.mem_size:
            raise ValueError(f"route save address {save:#x} is outside guest memory")
        r.entry, r.save, r.code_lo, r.code_hi = entry, save, code_lo, code_hi

    @property
    def routed(self) -> int:
        """System calls the interrupt hook routed so far."""
        return int(self._route.routed)

    @property
    def route(self) -> RouteCell:
        """The structure the interrupt hook shares with the owner: during ``on_interrupt``
        for a hypercall, ``hc_nr`` and ``hc_arg`` are EAX and EBX, and setting
        ``hc_result`` with ``hc_answer = 1`` makes the hook write EAX when the callback
        returns."""
        return self._route

    def hold_route(self, held: bool) -> None:
        """While held, every ``int $0x80`` goes to the owner's ``on_interrupt`` (set once
        a fault is recorded, so that the stop it requested is not dropped; see
        ``_preempt.c``)."""
        self._route.faulted = 1 if held else 0

    def start(self, begin: int, count: int = 0) -> int:
        """Run guest code from ``begin`` until stopped (or, with ``count``, until that many
        instructions ran: a debugger's single step); returns the uc_err code."""
        return int(_emu_start(self._h, begin, 0, 0, count))

    def run_slice(self, begin: int, count: int, watchdog: int, lane: int, deadline_ns: int) -> int:
        """One slice, as ``start`` with the stop flag cleared and ``hold_route(False)``, in one
        call (``_preempt.c``, denali_run), on lane ``lane`` of the watchdog at
        ``watchdog``, which stops it at ``deadline_ns`` (``time.monotonic_ns()``): EAX gets
        a result ``set_eax_later`` left, and the route's ``eip`` says where the engine
        stopped. Returns the uc_err code."""
        return int(_run(self._h, begin, count, self._route_addr, self.stop_cell, watchdog, lane, deadline_ns))

    def sleeper(self, ident: int) -> SleeperCell:
        """A sleeper cell for this engine (``_preempt.c``, 12.), named ``ident``."""
        c = SleeperCell()
        c.uc = self._h.value
        c.route = self._route_addr
        c.cell = self.stop_cell
        c.id = ident
        return c

    def set_eax_later(self, value: int) -> None:
        """EAX = ``value`` (a hypercall's result, between slices), written when the next
        slice starts; every register read sees it before then, and a ``reg_write`` of
        EAX replaces it."""
        r = self._route
        r.eax_value = value & 0xFFFFFFFF
        r.eax_pending = 1

    def _flush_eax(self) -> None:
        r = self._route
        r.eax_pending = 0
        v = ctypes.c_uint32(r.eax_value)
        self._check(_reg_write(self._h, REG_EAX, ctypes.byref(v)), "reg_write")

    def invalidate_code(self, begin: int, end: int) -> None:
        """Drop the translations of guest code in [begin, end) (after the host patched
        code bytes, e.g. a debugger's breakpoint; Unicorn does not see host writes)."""
        self._ctl(_CTL_TB_REMOVE_CACHE, ctypes.c_uint64(begin), ctypes.c_uint64(end))

    def flush_code(self) -> None:
        """Drop every translation (the next slice translates the guest's code again)."""
        self._ctl(_CTL_TB_FLUSH)

    def stop(self) -> None:
        """Stop a running ``start()`` from one of this engine's callbacks (its own thread
        only: from another thread use ``request_stop``, see ``_preempt.c``)."""
        _emu_stop(self._h)

    def reg_read(self, reg: int) -> int:
        if self._route.eax_pending:
            self._flush_eax()
        _reg_read(self._h, reg, self._u32ref)
        return self._u32.value

    def reg_write(self, reg: int, value: int) -> None:
        if reg == REG_EAX:
            self._route.eax_pending = 0
        v = ctypes.c_uint32(value & 0xFFFFFFFF)
        self._check(_reg_write(self._h, reg, ctypes.byref(v)), "reg_write")

    def read_gprs(self) -> dict[str, int]:
        """All general registers, EIP and EFLAGS in one call."""
        if self._route.eax_pending:
            self._flush_eax()
        vals, ptrs = self._batch_vals
        _reg_read_batch(self._h, self._batch_ids, ptrs, len(vals))
        return {name: v.value for name, v in zip(GPR_NAMES, vals, strict=True)}

    def read_fpu(self) -> bytes:
        """The x87 and SSE state (``FPU_STATE_SIZE`` bytes; layout at ``FPU_STATE_SIZE``)."""
        out = bytearray()
        buf = self._wide
        for reg, size in _FPU_REGS:
            self._check(_reg_read(self._h, reg, buf), "reg_read")
            out += bytes(buf)[:size]
        return bytes(out)

    def write_fpu(self, state: bytes) -> None:
        """Restore what ``read_fpu`` returned."""
        if len(state) != FPU_STATE_SIZE:
            raise ValueError(f"FPU state is {len(state)} bytes, not {FPU_STATE_SIZE}")
        buf = self._wide
        at = 0
        for reg, size in _FPU_REGS:
            ctypes.memset(buf, 0, len(buf))
            ctypes.memmove(buf, state[at : at + size], size)
            self._check(_reg_write(self._h, reg, buf), "reg_write")
            at += size

    def close(self) -> None:
        """Free the engine; idempotent. Never call while ``start()`` runs."""
        if self.closed:
            return
        self.closed = True
        _lib.uc_close(self._h)
        _OWNERS.pop(getattr(self, "_key", 0), None)


_reset_fpu: bytes | None = None


def reset_fpu() -> bytes:
    """``read_fpu()`` of an engine nobody has run: the x87/SSE state a fresh VM starts
    in (control word 0x37f, MXCSR 0x1f80 in Unicorn 2.1). Read once, from a throwaway
    engine; an engine given exactly these bytes need not be written at all."""
    global _reset_fpu
    if _reset_fpu is None:
        with mmap.mmap(-1, 4096) as page:
            anchor = ctypes.c_char.from_buffer(page)
            eng = Engine(_NoOwner(), ctypes.addressof(anchor), 4096, 1 << 20)
            try:
                _reset_fpu = eng.read_fpu()
            finally:
                eng.close()
                del anchor
    return _reset_fpu


class _NoOwner:
    """The owner of ``reset_fpu``'s engine, which never runs."""

    def on_interrupt(self, intno: int) -> None: ...
    def on_tlb_fill(self, vaddr: int, access: int) -> int:
        return 0

    def on_invalid_insn(self) -> None: ...
    def on_forbidden_insn(self, name: str) -> None: ...


def version() -> str:
    """libunicorn's version as "major.minor"."""
    major, minor = ctypes.c_uint(), ctypes.c_uint()
    _lib.uc_version(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"
