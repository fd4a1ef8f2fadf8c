"""The tracer: every hypercall (arguments and result), interrupt, fault, disk request and,
optionally, frame of a VM as one JSON line each (strace for denali).

``TraceWriter`` owns the file: lines go into a bounded buffer and one task writes them
out with aiofiles, so tracing never blocks the event loop; what does not fit in the
buffer is dropped and counted (``dropped``, and the trailer line). ``Tracer`` is the
monitor, one per VM, all writing to one ``TraceWriter``.

Schema (version 1; docs/monitors.md has it with examples). Every line is an object
with ``kind``; event lines also have ``t`` (the VM's clock, ns) and ``vm`` (its id):

- ``{"kind": "trace", "schema": 1, "denali": VERSION, "kinds": [...]}``: the first line;
- ``hypercall``: ``nr``, ``name`` (null for an unknown number), ``args`` (the argument
  structure's in/inout fields as the layer below read them; byte arrays as hex; null
  when the structure is not readable), ``result`` (EAX; null for TERMINATE, which
  does not return) and ``code`` (its ``Result`` name, or null), ``out`` (the out/inout
  fields after the call);
- ``interrupt``: ``bits`` and ``irqs`` (their ``Irq`` names), as a batch is delivered;
- ``fault``: ``fault`` (its kind), ``eip``, ``address``, ``access``, ``vector``, ``summary``;
- ``disk``: ``op`` (read, write, flush), ``handle``, ``block``, ``count``;
- ``frame_out``/``frame_in``: ``len``, ``dst``, ``src``, ``type`` (the EtherType, hex),
  and ``head`` (the first ``frame_bytes`` bytes as hex, when that is above 0);
- ``{"kind": "end", "records": N, "dropped": N}``: the last line, at close.
"""

from __future__ import annotations

import json
import logging
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import aiofiles

from denali import abi
from denali._version import __version__
from denali.abi import Irq, Result
from denali.errors import ConfigError
from denali.memory import PROT_R
from denali.monitor.base import FaultEvent, FaultVerdict, HypercallEvent, Monitor, Verdict

if TYPE_CHECKING:
    import asyncio

    from aiofiles.threadpool.text import AsyncTextIOWrapper

    from denali.devices.disk.device import DiskRequest
    from denali.monitor.stack import MonitorStack
    from denali.vm import Vm

log = logging.getLogger(__name__)

SCHEMA: Final = 1
TRACE_KINDS: Final = ("hypercall", "interrupt", "fault", "disk", "frame_out", "frame_in")
DEFAULT_KINDS: Final = frozenset(("hypercall", "interrupt", "fault", "disk"))
"""What a tracer records unless told otherwise (frames are optional)."""
FLUSH_BYTES: Final = 64 << 10
"""The writer task writes once this much is buffered, or every ``FLUSH_S``."""
FLUSH_S: Final = 0.05
_IRQ_NAMES: Final = tuple((int(b), b.name or "") for b in Irq)


def _renderer(
    h: abi.Hypercall, directions: tuple[str, ...]
) -> tuple[str, Callable[[bytes], tuple[Any, ...]]]:
    """The JSON object of the fields of ``h``'s structure in ``directions`` as a %-format,
    and a function from the structure's raw bytes to the values it formats (byte arrays
    as hex)."""
    codec = h.args.codec()
    fields = [(i, f) for i, f in enumerate(h.args.fields) if f.direction in directions]
    fmt = "{" + ",".join(f'"{f.name}":"%s"' if f.count > 1 else f'"{f.name}":%d' for _, f in fields) + "}"
    idx = tuple(i for i, _ in fields)
    unpack = codec.unpack
    if any(f.count > 1 for _, f in fields):
        hexed = frozenset(i for i, f in fields if f.count > 1)

        def values(raw: bytes) -> tuple[Any, ...]:
            vals = unpack(raw)
            return tuple(vals[i].hex() if i in hexed else vals[i] for i in idx)

        return fmt, values
    if not idx:
        return fmt, lambda raw: ()
    if len(idx) == 1:
        only = idx[0]
        return fmt, lambda raw: (unpack(raw)[only],)
    pick = operator.itemgetter(*idx)
    return fmt, lambda raw: pick(unpack(raw))


_Line = Callable[[int, int, "bytes | None", "int | None", "bytes | None"], str]


_CODES: Final = {int(r): f'"{r.name}"' for r in Result}


def _head(h: abi.Hypercall) -> str:
    return f'"nr":{h.nr},"name":"{h.name}","args":'


def _full_format(h: abi.Hypercall, fmt_in: str, fmt_out: str, result: int | None = None) -> str:
    """The %-format of a returned call's line: t, vm, the in fields (``fmt_in``), result,
    its code (JSON), the out fields (``fmt_out``); with ``result`` given, that result and
    its code are part of the format instead."""
    if result is None:
        res = ',"result":%d,"code":%s,"out":'
    else:
        res = f',"result":{result},"code":{_CODES[result]},"out":'
    return "".join(('{"kind":"hypercall","t":%d,"vm":%d,', _head(h), fmt_in, res, fmt_out, "}\n"))


def _line_of(h: abi.Hypercall) -> _Line:
    """A function from one call's record (clock, VM, the structure's raw bytes before,
    result or None, raw bytes after) to its JSON line."""
    fmt_in, vals_in = _renderer(h, ("in", "inout"))
    fmt_out, vals_out = _renderer(h, ("out", "inout"))
    head = _head(h)
    full = _full_format(h, fmt_in, fmt_out)
    codes = _CODES

    def line(t: int, vm: int, before: bytes | None, result: int | None, after: bytes | None) -> str:
        if before is not None and after is not None and result is not None:  # the common line: one format
            return full % ((t, vm, *vals_in(before), result, codes.get(result, "null"), *vals_out(after)))
        args = fmt_in % vals_in(before) if before is not None else "null"
        if after is not None:
            out = fmt_out % vals_out(after)
        else:
            out = "{}" if result is None else "null"
        if result is None:
            tail = '"result":null,"code":null,"out":'
        else:
            tail = f'"result":{result},"code":{_CODES.get(result, "null")},"out":'
        return f'{{"kind":"hypercall","t":{t},"vm":{vm},{head}{args},{tail}{out}}}\n'

    return line


_SIZES: Final = {h.nr: h.args.size for h in abi.HYPERCALLS}
_CLOCK: Final = abi.HYPERCALL_BY_NR[abi.Hc.CLOCK]
_CLOCK_LINE: Final = _full_format(
    _CLOCK, _renderer(_CLOCK, ("in", "inout"))[0], _renderer(_CLOCK, ("out", "inout"))[0], int(Result.OK)
)
"""A CLOCK answered natively: t, vm, now_ns (its t is the value it returned)."""
_NO_IN: Final = frozenset(
    h.nr for h in abi.HYPERCALLS if not any(f.direction in ("in", "inout") for f in h.args.fields)
)
"""Hypercalls whose structure the layer below only writes (CLOCK): nothing to read before."""
_NO_OUT: Final = frozenset(
    h.nr for h in abi.HYPERCALLS if not any(f.direction in ("out", "inout") for f in h.args.fields)
)
"""Hypercalls whose structure the layer below only reads (TIMER_SET): nothing to read after."""
_LINES: Final = {h.nr: _line_of(h) for h in abi.HYPERCALLS}
_HcRecord = tuple[int, int, int, "bytes | None", "int | None", "bytes | None"]
"""(t, vm, nr, the structure's bytes before, result or None, its bytes after)."""


class _Clocks(NamedTuple):
    """A VM's CLOCKs answered natively (a buffer item of ``len(values)`` lines)."""

    vm: int
    values: Sequence[int]


_HC_LINE_ESTIMATE: Final = 160
"""Bytes a hypercall line is counted as against the buffer's capacity before it is formatted."""


def _format_hc(rec: _HcRecord) -> str:
    t, vm, nr, before, result, after = rec
    line = _LINES.get(nr)
    if line is not None:
        return line(t, vm, before, result, after)
    out = "{}" if result is None else "null"
    res = "null" if result is None else str(result)
    return (
        f'{{"kind":"hypercall","t":{t},"vm":{vm},"nr":{nr},"name":null,"args":null,'
        f'"result":{res},"code":null,"out":{out}}}\n'
    )


def _format_clocks(rec: _Clocks) -> str:
    vm, line = rec.vm, _CLOCK_LINE
    return "".join([line % (v, vm, v) for v in rec.values])


def parse_kinds(text: str) -> frozenset[str]:
    """``"hypercall,fault"`` as a set of kinds; ``frame`` means both directions, ``all``
    every kind. ``ConfigError`` for an unknown one."""
    out: set[str] = set()
    for word in (w.strip().lower() for w in text.split(",")):
        if not word:
            continue
        if word == "all":
            out.update(TRACE_KINDS)
        elif word in ("frame", "frames"):
            out.update(("frame_out", "frame_in"))
        elif word in TRACE_KINDS:
            out.add(word)
        else:
            raise ConfigError(
                f"trace filter: {word!r} is not one of {', '.join((*TRACE_KINDS, 'frame', 'all'))}"
            )
    if not out:
        raise ConfigError("trace filter: no kind given")
    return frozenset(out)


class TraceWriter:
    """A JSON-lines file written through a bounded buffer by one task (see the module doc).

    ``async with TraceWriter(path) as w`` (or ``await open()`` ... ``await aclose()``).
    ``capacity``: bytes the buffer holds; a line that does not fit is dropped and counted.
    An I/O error while writing is logged once; every line after it counts as dropped.
    """

    def __init__(
        self, path: str | os.PathLike[str], kinds: Iterable[str] = DEFAULT_KINDS, capacity: int = 8 << 20
    ) -> None:
        if capacity < 4096:
            raise ConfigError(f"trace buffer of {capacity} bytes: give at least 4096")
        self.path = os.fspath(path)
        self.kinds = frozenset(kinds)
        self.capacity = capacity
        self.records = 0
        """Lines accepted into the buffer."""
        self.dropped = 0
        """Lines dropped: the buffer was full, or the file failed."""
        self.error: OSError | None = None
        self._buf: list[str | _HcRecord | _Clocks] = []
        """Lines, and hypercall records formatted only when written out (in batches)."""
        self._tracers: list[Tracer] = []
        """The tracers writing here (``add_tracer``): asked for what their VM's CPU logged
        before each write-out (``Tracer.pull``)."""
        self._size = 0
        self._lines = 0
        """Lines the buffer holds (a batch of native CLOCKs is one item, many lines)."""
        self._file: AsyncTextIOWrapper | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._closing = False

    async def __aenter__(self) -> TraceWriter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the file and start the writer task; ``ConfigError`` when it cannot be
        created."""
        import asyncio

        try:
            self._file = await aiofiles.open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"trace file {self.path}: {exc.strerror or exc}") from None
        self._ready = asyncio.Event()
        self._emit_line(
            {"kind": "trace", "schema": SCHEMA, "denali": __version__, "kinds": sorted(self.kinds)}
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="denali-trace-writer")

    def add_tracer(self, tracer: Tracer) -> None:
        """``tracer`` writes here: pull its VM's logged CLOCKs before each write-out."""
        self._tracers.append(tracer)

    def remove_tracer(self, tracer: Tracer) -> None:
        if tracer in self._tracers:
            self._tracers.remove(tracer)

    def emit(self, record: dict[str, Any]) -> None:
        """Buffer one record as a line (never blocks; dropped and counted when full)."""
        if self._ready is None or self._closing:
            self.dropped += 1
            return
        self._emit_line(record)

    def _emit_line(self, record: dict[str, Any]) -> None:
        self.emit_text(json.dumps(record, separators=(",", ":")) + "\n")

    def emit_text(self, line: str) -> None:
        """Buffer one line already encoded as JSON (ending in a newline)."""
        self._add(line, len(line))

    def emit_hypercall(self, record: _HcRecord) -> None:
        """Buffer one hypercall record (``_HcRecord``); formatted as it is written out."""
        self._add(record, _HC_LINE_ESTIMATE)

    def emit_clocks(self, vm: int, values: Sequence[int]) -> None:
        """Buffer VM ``vm``'s CLOCKs answered natively, one line each (formatted as they
        are written out)."""
        self._add(_Clocks(vm, values), _HC_LINE_ESTIMATE * len(values), len(values))

    def _add(self, item: str | _HcRecord | _Clocks, length: int, lines: int = 1) -> None:
        size = self._size + length
        if size > self.capacity or self.error is not None or self._closing:
            self.dropped += lines
            return
        self._buf.append(item)
        self._size = size
        self._lines += lines
        self.records += lines
        if size >= FLUSH_BYTES:
            ready = self._ready
            if ready is not None and not ready.is_set():
                ready.set()

    async def _run(self) -> None:
        import asyncio

        assert self._ready is not None
        while True:
            try:  # a write per FLUSH_BYTES, or at least every FLUSH_S: few trips to the executor
                await asyncio.wait_for(self._ready.wait(), FLUSH_S)
            except TimeoutError:
                pass
            self._ready.clear()
            await self._flush()
            if self._closing:
                return

    async def _flush(self) -> None:
        """Write out what is buffered now, once: lines added while that write is in the
        executor wait for the next trigger (FLUSH_BYTES or FLUSH_S), so a busy VM costs a
        trip to the executor per 64 KiB, not one per few lines. ``aclose`` drains."""
        for t in self._tracers:
            t.pull()
        f = self._file
        if self._buf and f is not None:
            n = self._lines
            fmt_hc, fmt_clocks = _format_hc, _format_clocks
            chunk = "".join(
                [
                    x if isinstance(x, str) else fmt_clocks(x) if isinstance(x, _Clocks) else fmt_hc(x)
                    for x in self._buf
                ]
            )
            self._buf.clear()
            self._size = self._lines = 0
            if self.error is not None:
                self.dropped += n
                return
            try:
                await f.write(chunk)
            except OSError as exc:
                self.error = exc
                self.dropped += n
                log.error("trace file %s: %s; the rest of the trace is dropped", self.path, exc)

    async def aclose(self) -> None:
        """Write out what the buffer holds and the trailer line, close the file; idempotent."""
        if self._file is None or self._closing:
            return
        assert self._ready is not None
        for t in self._tracers:
            t.pull()
        self._buf.append(
            json.dumps(
                {"kind": "end", "records": self.records, "dropped": self.dropped}, separators=(",", ":")
            )
            + "\n"
        )
        self._closing = True
        self._ready.set()
        if self._task is not None:
            await self._task
        while self._buf and self._file is not None:
            await self._flush()
        f, self._file = self._file, None
        try:
            await f.close()
        except OSError as exc:
            if self.error is None:
                self.error = exc
                log.error("trace file %s: closing: %s", self.path, exc)


def _raw(call: HypercallEvent) -> bytes | None:
    """A call's structure as raw bytes, or None (unknown number, not readable)."""
    size = _SIZES.get(call.nr)
    if size is None or not call.memory.check(call.arg, size, PROT_R):
        return None
    return call.memory.read(call.arg, size)


_IRQ_TAILS: dict[int, str] = {}
"""The end of an interrupt line for each batch of bits seen (a handful in practice)."""


def _irq_tail(bits: int) -> str:
    names = json.dumps([n for b, n in _IRQ_NAMES if bits & b], separators=(",", ":"))
    return f'"bits":{bits},"irqs":{names}}}'


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


class Tracer(Monitor):
    """Records its VM's events into ``writer`` (kinds from ``kinds``, default the
    writer's). ``frame_bytes``: how many bytes of each frame to record as hex.

    It only records CLOCK (``records_clock``): the CPU may answer CLOCK natively and the
    tracer writes the values it logged (``clocks_read``), with ``t`` the value returned;
    likewise NET_SEND and TIMER_SET (``records_calls``, ``calls_read``), with ``t`` the
    VM's clock at the call.
    """

    records_clock = True
    records_calls = True

    def __init__(self, writer: TraceWriter, kinds: Iterable[str] | None = None, frame_bytes: int = 0) -> None:
        self.writer = writer
        chosen = frozenset(kinds) if kinds is not None else writer.kinds
        unknown = chosen - set(TRACE_KINDS)
        if unknown:
            raise ConfigError(f"tracer: unknown kinds {sorted(unknown)}")
        self.kinds = chosen
        self.frame_bytes = max(0, frame_bytes)
        self._before: bytes | None = None
        self._read_nr = -1
        """The number whose structure ``hypercall`` read (-1: none), at ``_read_arg``."""
        self._read_arg = 0
        self._vmobj: Vm | None = None

    def _now(self) -> int:
        return self.stack.vm.now_ns() if self.stack is not None else 0

    def _vm(self) -> int:
        return self.stack.vm.id if self.stack is not None else 0

    def attached(self, stack: MonitorStack) -> None:
        super().attached(stack)
        self._vmobj = stack.vm
        self.writer.add_tracer(self)

    def detached(self) -> None:
        super().detached()
        self._vmobj = None
        self.writer.remove_tracer(self)

    def pull(self) -> None:
        """Take what the VM's CPU logged natively (the writer calls this before it writes
        out; never during a slice: the writer's task runs between them)."""
        stack = self.stack
        if stack is not None:
            stack.flush_records()

    def clocks_read(self, values: Sequence[int]) -> None:
        vm = self._vmobj
        self.writer.emit_clocks(vm.id if vm else 0, values)

    def calls_read(self, records: Sequence[tuple[int, int, bytes, bytes]]) -> None:
        vm = self._vmobj
        vid = vm.id if vm else 0
        emit = self.writer.emit_hypercall
        for nr, t, before, after in records:
            size = _SIZES[nr]
            emit((t, vid, nr, before[:size], int(Result.OK), b"" if nr in _NO_OUT else after[:size]))

    def hypercall(self, call: HypercallEvent) -> Verdict:
        nr = call.nr
        if nr in _NO_IN:  # no field to record: readability is learnt after the call
            self._before = None
            self._read_nr = -1
            return None
        before = _raw(call)  # unpacked and formatted only when written out
        if nr == abi.Hc.TERMINATE:  # never returns: recorded now
            vm = self._vmobj
            self.writer.emit_hypercall((vm.now_ns() if vm else 0, vm.id if vm else 0, nr, before, None, None))
        self._before = before
        self._read_nr = nr if before is not None else -1
        self._read_arg = call.arg
        return None

    def hypercall_done(self, call: HypercallEvent, result: int) -> int:
        nr, arg = call.nr, call.arg
        before = self._before
        after: bytes | None
        if self._read_nr == nr and self._read_arg == arg:  # read before: still readable
            after = b"" if nr in _NO_OUT else call.memory.read(arg, _SIZES[nr])
        else:
            after = _raw(call)
            if after is not None and nr in _NO_IN:  # readable, and no in field: {}
                before = b""
        vm = self._vmobj
        self.writer.emit_hypercall((vm.now_ns() if vm else 0, vm.id if vm else 0, nr, before, result, after))
        return result

    def interrupt(self, bits: int) -> int:
        tail = _IRQ_TAILS.get(bits)
        if tail is None:
            tail = _IRQ_TAILS[bits] = _irq_tail(bits)
        self.writer.emit_text(f'{{"kind":"interrupt","t":{self._now()},"vm":{self._vm()},{tail}\n')
        return bits

    async def fault(self, event: FaultEvent) -> FaultVerdict:
        r = event.report
        self.writer.emit(
            {
                "kind": "fault",
                "t": self._now(),
                "vm": self._vm(),
                "fault": r.kind.name.lower(),
                "eip": r.eip,
                "address": r.address,
                "access": r.access,
                "vector": r.vector,
                "summary": r.summary(),
            }
        )
        return None

    def disk(self, request: DiskRequest) -> DiskRequest | int:
        self.writer.emit(
            {
                "kind": "disk",
                "t": self._now(),
                "vm": self._vm(),
                "op": request.kind,
                "handle": request.handle,
                "block": request.block,
                "count": request.count,
            }
        )
        return request

    def _frame(self, kind: str, frame: bytes) -> None:
        rec: dict[str, Any] = {
            "kind": kind,
            "t": self._now(),
            "vm": self._vm(),
            "len": len(frame),
            "dst": _mac(frame[0:6]),
            "src": _mac(frame[6:12]),
            "type": f"0x{int.from_bytes(frame[12:14], 'big'):04x}",
        }
        if self.frame_bytes:
            rec["head"] = frame[: self.frame_bytes].hex()
        self.writer.emit(rec)

    def frame_out(self, frame: bytes) -> bytes | int | None:
        self._frame("frame_out", frame)
        return frame

    def frame_in(self, frame: bytes) -> bytes | None:
        self._frame("frame_in", frame)
        return frame
