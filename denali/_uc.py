"""The only module that calls libunicorn: a thin, typed ctypes layer over its C API.

Why direct calls: the Python binding's wrappers cost about 3x more per call on the hot
path (``emu_start``, register access) and every engine with a Python hook sits in a
reference cycle (ARCHITECTURE.md). Here there are exactly three C callbacks for the
whole process (interrupt, TLB fill, invalid instruction); each engine registers them with
a small integer key as ``user_data`` and the callbacks find the engine's owner in
``_OWNERS``. Nothing here knows about VMs: an owner is any object implementing
``EngineOwner``.

Contract: an ``Engine`` must be used from one thread at a time, except ``stop()``, which
any thread may call while ``start()`` runs (that is how slices are preempted).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import Final, Protocol

import unicorn
from unicorn import x86_const as _x86

from denali.errors import ResourceError

_LIB_PATH: Final = os.path.join(os.path.dirname(unicorn.__file__), "lib", "libunicorn.so.2")
# CDLL releases the GIL for the duration of every call (emu_start runs guest code
# without it); callbacks re-take it.
_lib: Final = ctypes.CDLL(_LIB_PATH)

UC_ARCH_X86: Final = 4
UC_MODE_32: Final = 1 << 2
UC_HOOK_INTR: Final = 1 << 0
UC_HOOK_INSN: Final = 1 << 1
UC_HOOK_INSN_INVALID: Final = 1 << 14
UC_HOOK_TLB_FILL: Final = 1 << 17
UC_TLB_VIRTUAL: Final = 1
UC_PROT_ALL: Final = 7
_CTL_TLB_TYPE: Final = 12
_CTL_TCG_BUFFER_SIZE: Final = 13
_CTL_TB_FLUSH: Final = 10
_CTL_TLB_FLUSH: Final = 11
_CTL_IO_WRITE: Final = 1

# uc_mem_type values seen by the TLB-fill hook
MEM_READ: Final = 16
MEM_WRITE: Final = 17
MEM_FETCH: Final = 18

UC_ERR_OK: Final = 0
UC_ERR_NOMEM: Final = 1
UC_ERR_INSN_INVALID: Final = 10
UC_ERR_EXCEPTION: Final = 21

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

_FPU_REGS: Final = (
    *((r, 10) for r in (_x86.UC_X86_REG_FP0, _x86.UC_X86_REG_FP1, _x86.UC_X86_REG_FP2,
                        _x86.UC_X86_REG_FP3, _x86.UC_X86_REG_FP4, _x86.UC_X86_REG_FP5,
                        _x86.UC_X86_REG_FP6, _x86.UC_X86_REG_FP7)),
    *((r, 16) for r in (_x86.UC_X86_REG_XMM0, _x86.UC_X86_REG_XMM1, _x86.UC_X86_REG_XMM2,
                        _x86.UC_X86_REG_XMM3, _x86.UC_X86_REG_XMM4, _x86.UC_X86_REG_XMM5,
                        _x86.UC_X86_REG_XMM6, _x86.UC_X86_REG_XMM7)),
    (_x86.UC_X86_REG_FPCW, 4), (_x86.UC_X86_REG_FPSW, 4), (_x86.UC_X86_REG_FPTAG, 4),
    (_x86.UC_X86_REG_MXCSR, 4), (_x86.UC_X86_REG_FS, 4), (_x86.UC_X86_REG_GS, 4),
)
"""What ``save_extended`` keeps: x87 and SSE registers, their control words, and the FS
and GS selectors (thread-local storage)."""
EXTENDED_SIZE: Final = sum(n for _, n in _FPU_REGS)

GPR_NAMES: Final = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags")
_GPR_IDS: Final = (REG_EAX, REG_EBX, REG_ECX, REG_EDX, REG_ESI, REG_EDI, REG_EBP, REG_ESP,
                   REG_EIP, REG_EFLAGS)


class _TlbEntry(ctypes.Structure):
    _fields_ = [("paddr", ctypes.c_uint64), ("perms", ctypes.c_int)]


class _Mmr(ctypes.Structure):
    _fields_ = [("selector", ctypes.c_uint16), ("base", ctypes.c_uint64),
                ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_TLB_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                           ctypes.POINTER(_TlbEntry), ctypes.c_void_p)
_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                           ctypes.c_void_p)
_SYS_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_FORBIDDEN_INSNS: Final = ((_x86.UC_X86_INS_IN, "in"), (_x86.UC_X86_INS_OUT, "out"),
                           (_x86.UC_X86_INS_SYSCALL, "syscall"), (_x86.UC_X86_INS_SYSENTER, "sysenter"))

_lib.uc_open.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
_lib.uc_close.argtypes = [ctypes.c_void_p]
_lib.uc_emu_start.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                              ctypes.c_uint64, ctypes.c_size_t]
_lib.uc_emu_stop.argtypes = [ctypes.c_void_p]
_lib.uc_reg_read.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_lib.uc_reg_write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_lib.uc_reg_read_batch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_lib.uc_mem_map_ptr.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t,
                                ctypes.c_uint32, ctypes.c_void_p]
_lib.uc_strerror.argtypes = [ctypes.c_int]
_lib.uc_strerror.restype = ctypes.c_char_p
# uc_hook_add and uc_ctl are variadic: their arguments are passed with explicit types.

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
_insn_hooks: Final = {"in": _IN_CB(_in), "out": _OUT_CB(_out), "syscall": _SYS_CB(_syscall),
                      "sysenter": _SYS_CB(_sysenter)}
_intr_hook = _INTR_CB(_intr)
_tlb_hook = _TLB_CB(_tlb)
_insn_hook = _INSN_CB(_insn)


def strerror(code: int) -> str:
    """Unicorn's message for an error code."""
    msg = _lib.uc_strerror(code)
    return msg.decode() if msg else f"unicorn error {code}"


def _desc(base: int, limit: int, access: int) -> bytes:
    """One 8-byte segment descriptor, 4 KiB granularity, 32-bit."""
    return bytes((limit & 0xFF, (limit >> 8) & 0xFF, base & 0xFF, (base >> 8) & 0xFF,
                  (base >> 16) & 0xFF, access, 0xC0 | ((limit >> 16) & 0xF), (base >> 24) & 0xFF))


GDT: Final = (bytes(8) + _desc(0, 0xFFFFF, 0x9A) + _desc(0, 0xFFFFF, 0x92)
              + _desc(0, 0xFFFFF, 0xFA) + _desc(0, 0xFFFFF, 0xF2) + bytes(8 * 4))
"""Null, kernel code/data (DPL 0), user code/data (DPL 3): flat 4 GiB segments; entry 5
unused; entries 6-8 the thread-local-storage descriptors (SET_TLS), empty at boot."""
TLS_GDT_OFFSET: Final = 6 * 8
"""Byte offset of the first TLS descriptor in the GDT."""


def tls_descriptor(base: int, limit: int, pages: bool) -> bytes:
    """A DPL 3 read/write data segment descriptor (32-bit), as SET_TLS installs. Marked
    accessed already: the CPU would otherwise set that bit in the (read-only) GDT."""
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

    __slots__ = ("_batch_ids", "_batch_vals", "_eip_call", "_h", "_hooks", "_key", "_u32", "_u32ref",
                 "closed")

    def __init__(self, owner: EngineOwner, mem_addr: int, mem_size: int,
                 tcg_buffer: int) -> None:
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
        self._eip_call = functools.partial(_reg_read_bare, h, ctypes.c_int(REG_EIP), self._u32ref)
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

    def _ctl(self, ctl: int, *args: object) -> None:
        code = ctl | (len(args) << 26) | (_CTL_IO_WRITE << 30)
        err = _lib.uc_ctl(self._h, ctypes.c_int(code), *args)
        if err:
            raise ResourceError(f"uc_ctl({ctl}) failed: {strerror(err)}")

    def enter_user_mode(self, kernel_page: int, stack: int) -> None:
        """Prepare the first ``start()``: GDT at ``kernel_page``, kernel SS:ESP at ``stack``.

        The caller has written ``GDT`` at kernel_page and an ``iret`` frame (entry,
        USER_CS, eflags, user_sp, USER_DS) at ``stack``; starting at the trampoline's
        ``iret`` drops to CPL 3. Must run before ``install_hooks`` (segment loads with
        the TLB hook installed crash Unicorn outside emulation).
        """
        gdtr = _Mmr(0, kernel_page, len(GDT) - 1, 0)
        self._check(_reg_write(self._h, REG_GDTR, ctypes.byref(gdtr)), "GDTR")
        for reg, val in ((REG_SS, KERNEL_DS), (REG_DS, KERNEL_DS), (REG_ES, KERNEL_DS),
                         (REG_FS, KERNEL_DS), (REG_GS, KERNEL_DS), (REG_CS, KERNEL_CS),
                         (REG_ESP, stack)):
            self.reg_write(reg, val)

    def install_hooks(self) -> None:
        """Register the process-wide callbacks for this engine."""
        for kind, cb, begin, end in ((UC_HOOK_INTR, _intr_hook, 1, 0),
                                     (UC_HOOK_TLB_FILL, _tlb_hook, 1, 0),
                                     (UC_HOOK_INSN_INVALID, _insn_hook, 1, 0)):
            hh = ctypes.c_size_t()
            err = _lib.uc_hook_add(self._h, ctypes.byref(hh), ctypes.c_int(kind), cb,
                                   ctypes.c_void_p(self._key), ctypes.c_uint64(begin),
                                   ctypes.c_uint64(end))
            self._check(err, "hook")
            self._hooks.append(hh)
        for insn, name in _FORBIDDEN_INSNS:
            hh = ctypes.c_size_t()
            err = _lib.uc_hook_add(self._h, ctypes.byref(hh), ctypes.c_int(UC_HOOK_INSN),
                                   _insn_hooks[name], ctypes.c_void_p(self._key), ctypes.c_uint64(1),
                                   ctypes.c_uint64(0), ctypes.c_int(insn))
            self._check(err, f"{name} hook")
            self._hooks.append(hh)

    @staticmethod
    def _check(err: int, what: str) -> None:
        if err:
            raise ResourceError(f"unicorn {what}: {strerror(err)}")

    @property
    def handle(self) -> int:
        """The raw ``uc_engine*`` (for ``stop_handle`` from another thread)."""
        return self._h.value or 0

    def start(self, begin: int) -> int:
        """Run guest code from ``begin`` until stopped; returns the uc_err code."""
        return int(_emu_start(self._h, begin, 0, 0, 0))

    def stop(self) -> None:
        """Ask a running ``start()`` to return (any thread)."""
        _emu_stop(self._h)

    def reg_read(self, reg: int) -> int:
        _reg_read(self._h, reg, self._u32ref)
        return self._u32.value

    def read_eip(self) -> int:
        """EIP, with the call's arguments converted once (the routed-system-call path)."""
        self._eip_call()
        return self._u32.value

    def reg_write(self, reg: int, value: int) -> None:
        v = ctypes.c_uint32(value & 0xFFFFFFFF)
        self._check(_reg_write(self._h, reg, ctypes.byref(v)), "reg_write")

    def read_gprs(self) -> dict[str, int]:
        """All general registers, EIP and EFLAGS in one call."""
        vals, ptrs = self._batch_vals
        _reg_read_batch(self._h, self._batch_ids, ptrs, len(vals))
        return {name: v.value for name, v in zip(GPR_NAMES, vals, strict=True)}

    def flush_tlb(self) -> None:
        """Drop every cached page translation: the next access to each page asks
        ``on_tlb_fill`` again (after page permissions were lowered)."""
        self._ctl(_CTL_TLB_FLUSH)

    def save_extended(self) -> bytes:
        """The x87/SSE state and the FS/GS selectors, packed (``EXTENDED_SIZE`` bytes)."""
        out = bytearray()
        buf = ctypes.create_string_buffer(16)
        for reg, n in _FPU_REGS:
            ctypes.memset(buf, 0, 16)
            _reg_read(self._h, reg, buf)
            out += buf.raw[:n]
        return bytes(out)

    def restore_extended(self, state: bytes) -> None:
        """Load what ``save_extended`` returned. Segment selectors are loaded from the GDT
        in guest memory, so the descriptors must be in place; call before ``install_hooks``."""
        if len(state) != EXTENDED_SIZE:
            raise ValueError("bad extended CPU state")
        pos = 0
        for reg, n in _FPU_REGS:
            buf = ctypes.create_string_buffer(state[pos:pos + n], 16)
            self._check(_reg_write(self._h, reg, buf), "restore_extended")
            pos += n

    def flush_tb(self) -> None:
        """Drop all translated code (after the host rewrote guest code)."""
        self._ctl(_CTL_TB_FLUSH)

    def close(self) -> None:
        """Free the engine; idempotent. Never call while ``start()`` runs."""
        if self.closed:
            return
        self.closed = True
        _lib.uc_close(self._h)
        _OWNERS.pop(getattr(self, "_key", 0), None)


_bare: Final = ctypes.CDLL(_LIB_PATH)
_emu_start_bare: Final = _bare.uc_emu_start
_reg_read_bare: Final = _bare.uc_reg_read
"""uc_emu_start without argtypes: called only with ready-made ctypes arguments."""


def restarter(handle: int, begin: int) -> Callable[[], int]:
    """A function that runs ``uc_emu_start(handle, begin, 0, 0, 0)``, its arguments
    converted once (the hot restart of a routed system call: ctypes' per-call argument
    conversion is a third of its cost); the caller owns the engine."""
    return functools.partial(_emu_start_bare, ctypes.c_void_p(handle), ctypes.c_uint64(begin),
                             ctypes.c_uint64(0), ctypes.c_uint64(0), ctypes.c_size_t(0))


def stop_handle(handle: int) -> None:
    """``uc_emu_stop`` on a raw handle; the caller guarantees the engine is alive."""
    _emu_stop(ctypes.c_void_p(handle))


def version() -> str:
    """libunicorn's version as "major.minor"."""
    major, minor = ctypes.c_uint(), ctypes.c_uint()
    _lib.uc_version(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"
