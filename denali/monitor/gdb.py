"""A gdb stub: one VM debugged by the real ``gdb`` over the GDB remote serial protocol.

``GdbStub`` is a monitor (it interposes on faults only, so its VM's hypercalls,
interrupts and frames keep their direct path) and a TCP server for one debugger at a
time. It speaks: the i386 target description (``qXfer:features:read``: the core
registers, x87 and SSE), ``g``/``G``/``p``/``P`` (registers), ``m``/``M`` (memory,
through the VM's page map: only pages the guest may read, and for writes its data and
code pages, never the kernel page), ``Z0``/``z0`` (software breakpoints: ``int3``
patched into the code and its translation dropped), ``s`` (one instruction), ``c``,
``vCont``, Ctrl-C, ``D`` (detach: breakpoints out, the VM runs on), ``k``/``vKill``
(the VM is stopped, KILLED), ``QStartNoAckMode``. The VM is thread 1 of process 1;
there is no multiprocess extension (several VMs: one stub, one port each).

Hardware breakpoints and watchpoints (``Z1``-``Z4``) are not offered: Unicorn's memory
hooks would put every load and store of the VM on the slow path while one is set.
Software watchpoints work (gdb single-steps): ``set can-use-hw-watchpoints 0`` first,
since gdb does not fall back to them by itself.

Stopping: the stub holds its VM (``MonitorStack.hold``) when gdb connects, on Ctrl-C,
at a breakpoint, after a step and at a fault; a held VM waits in its own coroutine and
every other VM runs. ``wait=True`` (``--gdb-wait``) holds it before its first
instruction until gdb connects and continues. Faults: gdb sees the signal (SIGSEGV for
memory and privilege faults, SIGILL, SIGFPE, SIGTRAP for a stray ``int3``); continuing
with the signal lets the fault stand (the VM ends FAULTED, gdb sees ``X``), continuing
without it (``signal 0``) resumes the VM at its EIP. A VM that ends while gdb waits
reports ``W`` (its exit status) or ``X``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Final

from denali import _uc
from denali.errors import ConfigError, DenaliError
from denali.fault import FaultKind
from denali.monitor.base import FaultEvent, FaultVerdict, Monitor, Resume
from denali.monitor.rsp import INTERRUPT, RspConnection
from denali.vm import VmState

if TYPE_CHECKING:
    from denali.monitor.stack import MonitorStack

log = logging.getLogger(__name__)

SIGINT: Final = 2
SIGILL: Final = 4
SIGTRAP: Final = 5
SIGFPE: Final = 8
SIGKILL: Final = 9
SIGSEGV: Final = 11
_FAULT_SIGNALS: Final = {
    FaultKind.BREAKPOINT: SIGTRAP,
    FaultKind.DIVIDE: SIGFPE,
    FaultKind.INVALID_INSN: SIGILL,
}
_INT3: Final = b"\xcc"
CLOSE_GRACE_S: Final = 2.0

# gdb's i386 register numbers: name, size in bytes
_GPR_ORDER: Final = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags")
_SEGS: Final = ("cs", "ss", "ds", "es", "fs", "gs")
_FPU_CTL: Final = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
REGISTERS: Final = (
    [(n, 4) for n in _GPR_ORDER]
    + [(n, 4) for n in _SEGS]
    + [(f"st{i}", 10) for i in range(8)]
    + [(n, 4) for n in _FPU_CTL]
    + [(f"xmm{i}", 16) for i in range(8)]
    + [("mxcsr", 4)]
)
_REG_INDEX: Final = {name: i for i, (name, _) in enumerate(REGISTERS)}


def _target_xml() -> str:
    regs = []
    for i, (name, size) in enumerate(REGISTERS):
        if name in ("eip",):
            t = "code_ptr"
        elif name in ("esp", "ebp"):
            t = "data_ptr"
        elif name.startswith("st"):
            t = "i387_ext"
        elif name.startswith("xmm"):
            t = "vec128"
        else:
            t = "int32"
        group = ' group="float"' if name in _FPU_CTL else ' group="vector"' if name == "mxcsr" else ""
        regs.append((name, f'<reg name="{name}" bitsize="{size * 8}" type="{t}" regnum="{i}"{group}/>'))
    core = "\n    ".join(x for n, x in regs if not (n.startswith("xmm") or n == "mxcsr"))
    sse = "\n    ".join(x for n, x in regs if n.startswith("xmm") or n == "mxcsr")
    return f"""<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>i386</architecture>
  <feature name="org.gnu.gdb.i386.core">
    {core}
  </feature>
  <feature name="org.gnu.gdb.i386.sse">
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
    {sse}
  </feature>
</target>
"""


TARGET_XML: Final = _target_xml().encode()


def _signal_for(kind: FaultKind) -> int:
    return _FAULT_SIGNALS.get(kind, SIGSEGV)


class GdbStub(Monitor):
    """The gdb stub of one VM (see the module docstring). ``await start()`` to listen on
    ``host:port`` (port 0: any free one; ``port`` then says which), ``await aclose()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, wait: bool = False) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"gdb port {port} is not 0-65535")
        self.kinds = frozenset(("fault",))
        self.host = host
        self.port = port
        self.wait = wait
        self._server: asyncio.Server | None = None
        self._conn: RspConnection | None = None
        self._attached = asyncio.Event()
        self._wake = asyncio.Event()
        self._bps: dict[int, bytes] = {}
        self._stop_sig = SIGTRAP
        self._stop_note = ""
        self._pass_signal = False
        self._pending_read: asyncio.Task[bytes | None] | None = None
        self._session_task: asyncio.Future[None] | None = None
        self._closing = False
        self.sessions = 0
        """Debugger connections served."""

    # ---- the server ----
    async def start(self) -> int:
        """Listen for gdb; returns the port. ``ConfigError`` when the address cannot be bound."""
        try:
            self._server = await asyncio.start_server(self._client, self.host, self.port)
        except OSError as exc:
            raise ConfigError(f"gdb {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def aclose(self) -> None:
        """Stop listening and drop the debugger's connection; idempotent. A debugger told
        of its VM's end gets up to ``CLOSE_GRACE_S`` to hang up first."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._closing = True
        session = self._session_task
        if session is not None and not session.done():
            await asyncio.wait({session}, timeout=CLOSE_GRACE_S)
        conn = self._conn
        if conn is not None:
            conn.close()

    def attached(self, stack: MonitorStack) -> None:
        super().attached(stack)
        if self.wait:  # held at the guest's entry point: the kernel's iret to it runs first
            stack.hold_nowait(self)
            if stack.vm.first_slice_ns is None:
                stack.step(self)
        self._attached.set()

    def detached(self) -> None:
        self._remove_breakpoints()
        super().detached()

    def _stack(self) -> MonitorStack:
        if self.stack is None:
            raise ConfigError("gdb stub is not attached to a VM")
        return self.stack

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._conn is not None:  # one debugger at a time
            writer.close()
            return
        conn = RspConnection(reader, writer)
        self._conn = conn
        self.sessions += 1
        self._session_task = asyncio.current_task()
        try:
            await self._attached.wait()
            await self._session(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # a bug in the stub: drop the debugger, keep the VM
            if not self._closing:  # (a write racing our own close is not one)
                log.error("gdb stub: internal error (%r); the debugger is disconnected", exc, exc_info=exc)
        finally:
            if self._pending_read is not None:
                self._pending_read.cancel()
                self._pending_read = None
            self._conn = None
            self._let_go()
            conn.close()

    def _let_go(self) -> None:
        """The debugger is gone: breakpoints out, the VM runs on."""
        self._remove_breakpoints()
        if self.stack is not None:
            self._pass_signal = True  # a fault the debugger saw and left stands
            self.stack.release(self)

    async def _next_item(self, conn: RspConnection) -> bytes | None:
        task = self._pending_read
        if task is None:
            task = self._pending_read = asyncio.ensure_future(conn.read_item())
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._pending_read = None

    async def _session(self, conn: RspConnection) -> None:
        stack = self._stack()
        if not stack.vm.state.final:
            self._stop_sig, self._stop_note = SIGTRAP, ""
            await stack.hold(self)
        while True:
            item = await self._next_item(conn)
            if item is None:
                return
            if item == INTERRUPT:
                continue  # already stopped
            try:
                reply = await self._handle(conn, item)
            except ValueError:  # a malformed packet: an error reply, the session goes on
                reply = b"E16"
            if reply is None:
                return
            await conn.send(reply)
            if item == b"QStartNoAckMode":
                conn.no_ack = True
            if item.startswith(b"D") or item.startswith(b"vKill"):
                return

    # ---- packets ----
    async def _handle(self, conn: RspConnection, pkt: bytes) -> bytes | None:
        stack = self._stack()
        c = pkt[:1]
        if pkt.startswith(b"qSupported"):
            return b"PacketSize=4000;qXfer:features:read+;swbreak+;QStartNoAckMode+;vContSupported+"
        if pkt == b"QStartNoAckMode":
            return b"OK"  # acks end once it is sent (_session)
        if pkt.startswith(b"qXfer:features:read:"):
            return self._xfer(pkt[len(b"qXfer:features:read:") :])
        if pkt == b"qAttached":
            return b"1"
        if pkt == b"qC":
            return b"QC1"
        if pkt == b"qfThreadInfo":
            return b"m1"
        if pkt == b"qsThreadInfo":
            return b"l"
        if pkt.startswith(b"qSymbol"):
            return b"OK"
        if c == b"H" or pkt.startswith(b"T"):
            return b"OK"
        if c == b"?":
            return self._stop_reply()
        if c == b"g":
            return self._read_registers().hex().encode()
        if c == b"G":
            return self._write_registers(bytes.fromhex(pkt[1:].decode()))
        if c == b"p":
            return self._read_register(int(pkt[1:], 16))
        if c == b"P":
            n, _, v = pkt[1:].partition(b"=")
            return self._write_register(int(n, 16), bytes.fromhex(v.decode()))
        if c == b"m":
            where, _, n = pkt[1:].partition(b",")
            data = stack.read_memory(int(where, 16), min(int(n, 16), 0x1F00))
            return data.hex().encode() if data is not None else b"E0e"
        if c == b"M":
            head, _, hexdata = pkt[1:].partition(b":")
            where, _, n = head.partition(b",")
            data = bytes.fromhex(hexdata.decode())
            if len(data) != int(n, 16):
                return b"E16"
            return b"OK" if stack.write_memory(int(where, 16), data) else b"E0e"
        if pkt.startswith(b"Z0,") or pkt.startswith(b"z0,"):
            bp = int(pkt[3:].split(b",")[0], 16)
            return self._insert(bp) if c == b"Z" else self._remove(bp)
        if pkt == b"vCont?":
            return b"vCont;c;C;s;S"
        if pkt.startswith(b"vCont;"):
            action = pkt[6:].split(b";")[0].split(b":")[0]
            step = action[:1] in (b"s", b"S")
            sig = int(action[1:3], 16) if action[:1] in (b"C", b"S") and len(action) >= 3 else 0
            return await self._resume(conn, step, sig)
        if c in (b"c", b"s"):
            return await self._resume(conn, c == b"s", 0)
        if c in (b"C", b"S"):
            return await self._resume(conn, c == b"S", int(pkt[1:3], 16))
        if c == b"D":
            self._let_go()
            return b"OK"
        if c == b"k" or pkt.startswith(b"vKill"):
            self._remove_breakpoints()
            stack.stop("gdb: killed by the debugger")
            stack.release(self)
            return b"OK" if pkt.startswith(b"vKill") else None
        return b""  # not supported

    def _xfer(self, rest: bytes) -> bytes:
        annex, _, span = rest.partition(b":")
        if annex != b"target.xml":
            return b"E00"
        off, _, n = span.partition(b",")
        start, length = int(off, 16), int(n, 16)
        chunk = TARGET_XML[start : start + length]
        return (b"l" if start + length >= len(TARGET_XML) else b"m") + chunk

    # ---- registers ----
    def _read_registers(self) -> bytes:
        st = self._stack().cpu_state()
        regs = st.registers()
        out = bytearray()
        for n in _GPR_ORDER:
            out += struct.pack("<I", regs[n])
        out += struct.pack(
            "<IIIIII", _uc.USER_CS, _uc.USER_DS, _uc.USER_DS, _uc.USER_DS, st.fs & 0xFFFF, st.gs & 0xFFFF
        )
        fpu = st.fpu
        cw, sw, tag = struct.unpack_from("<HHH", fpu, 0)
        out += fpu[6:86]  # st0..st7, 10 bytes each
        out += struct.pack("<8I", cw, sw, tag, 0, 0, 0, 0, 0)
        mxcsr = fpu[86:90]
        out += fpu[90:218]  # xmm0..xmm7
        out += mxcsr
        return bytes(out)

    def _write_registers(self, data: bytes) -> bytes:
        if len(data) < 64:
            return b"E16"
        vals = struct.unpack_from("<10I", data, 0)
        ok = self._stack().set_registers(dict(zip(_GPR_ORDER, vals, strict=True)))
        if ok and len(data) >= 308:
            ok = self._set_fpu(data[64:308])
        return b"OK" if ok else b"E0e"

    def _read_register(self, n: int) -> bytes:
        if not 0 <= n < len(REGISTERS):
            return b"E16"
        regs = self._read_registers()
        at = sum(size for _, size in REGISTERS[:n])
        return regs[at : at + REGISTERS[n][1]].hex().encode()

    def _write_register(self, n: int, value: bytes) -> bytes:
        if not 0 <= n < len(REGISTERS) or len(value) != REGISTERS[n][1]:
            return b"E16"
        name = REGISTERS[n][0]
        if name in _GPR_ORDER:
            ok = self._stack().set_registers({name: int.from_bytes(value, "little")})
            return b"OK" if ok else b"E0e"
        if name in _SEGS:
            return b"E0e"  # the guest's segments are the kernel's
        regs = bytearray(self._read_registers())
        at = sum(size for _, size in REGISTERS[:n])
        regs[at : at + len(value)] = value
        return b"OK" if self._set_fpu(bytes(regs[64:308])) else b"E0e"

    def _set_fpu(self, part: bytes) -> bool:
        """The x87/SSE block of a 'G' packet (st0-7, the 8 control words, xmm0-7, mxcsr)."""
        cw, sw, tag = struct.unpack_from("<III", part, 80)
        fpu = (
            struct.pack("<HHH", cw & 0xFFFF, sw & 0xFFFF, tag & 0xFFFF)
            + part[0:80]
            + part[240:244]
            + part[112:240]
        )
        return self._stack().set_fpu(fpu)

    # ---- breakpoints ----
    def _insert(self, addr: int) -> bytes:
        if addr in self._bps:
            return b"OK"
        stack = self._stack()
        orig = stack.read_memory(addr, 1)
        if orig is None or not stack.write_memory(addr, _INT3):
            return b"E0e"
        self._bps[addr] = orig
        return b"OK"

    def _remove(self, addr: int) -> bytes:
        orig = self._bps.pop(addr, None)
        if orig is None:
            return b"OK"
        return b"OK" if self._stack().write_memory(addr, orig) else b"E0e"

    def _remove_breakpoints(self) -> None:
        stack = self.stack
        bps, self._bps = self._bps, {}
        if stack is not None and not stack.vm.state.final:
            for addr, orig in bps.items():
                stack.write_memory(addr, orig)

    # ---- running and stopping ----
    async def _resume(self, conn: RspConnection, step: bool, sig: int) -> bytes | None:
        """Run the VM (one instruction with ``step``) until it stops again or ends; the
        stop reply (None when the debugger went away)."""
        stack = self._stack()
        vm = stack.vm
        if vm.state.final:
            return self._stop_reply()
        self._pass_signal = sig != 0
        self._wake.clear()
        self._stop_sig, self._stop_note = SIGTRAP, ""
        if step:
            stack.step(self)
        else:
            stack.release(self)
        ended = asyncio.ensure_future(self._ended())
        try:
            while True:
                stopped = asyncio.ensure_future(self._until_stopped())
                reader = asyncio.ensure_future(self._next_item(conn))
                done, _ = await asyncio.wait({stopped, ended, reader}, return_when=asyncio.FIRST_COMPLETED)
                for t in (stopped, reader):  # the read itself goes on (shielded) for the next call
                    if not t.done():
                        t.cancel()
                await asyncio.gather(stopped, reader, return_exceptions=True)
                if ended in done or vm.state.final:
                    return self._stop_reply()
                if stopped in done:
                    return self._stop_reply()
                item = reader.result() if reader in done and not reader.cancelled() else b""
                if item is None:
                    return None
                if item == INTERRUPT and self not in stack._holders:
                    self._stop_sig, self._stop_note = SIGINT, ""
                    stack.hold_nowait(self)
                    self._wake.set()
        finally:
            if not ended.done():
                ended.cancel()

    async def _until_stopped(self) -> None:
        """Return once this stub holds the VM again and the VM is held."""
        stack = self._stack()
        while self not in stack._holders:
            await self._wake.wait()
            self._wake.clear()
        await stack.until_held()

    async def _ended(self) -> None:
        try:
            await self._stack().vm.wait()
        except DenaliError:
            pass

    def _stop_reply(self) -> bytes:
        vm = self._stack().vm
        if vm.state is VmState.EXITED:
            return f"W{(vm.exit_status or 0) & 0xFF:02x}".encode()
        if vm.state is VmState.FAULTED:
            return f"X{_signal_for(vm.fault.kind) if vm.fault else SIGSEGV:02x}".encode()
        if vm.state.final:
            return f"X{SIGKILL:02x}".encode()
        return f"T{self._stop_sig:02x}thread:1;{self._stop_note}".encode()

    async def fault(self, event: FaultEvent) -> FaultVerdict:
        stack = self.stack
        r = event.report
        if stack is None or self._conn is None:
            return None  # no debugger: the fault stands
        if r.kind is FaultKind.BREAKPOINT and r.eip in self._bps:
            stack.set_registers({"eip": r.eip})  # back onto the breakpoint
            self._stop_sig, self._stop_note = SIGTRAP, "swbreak:;"
            stack.hold_nowait(self)
            self._wake.set()
            return Resume()
        self._stop_sig, self._stop_note = _signal_for(r.kind), ""
        stack.hold_nowait(self)
        self._wake.set()
        await stack.gate()  # the debugger decides: continue with the signal, or without
        if self._pass_signal:
            return None
        return Resume()
