"""The virtual disk device: DISK_INFO/READ/WRITE/FLUSH over a VM's disks (``Disks``).

A VM has up to 16 disks, each a fixed number of 4 KiB blocks, found by name
(``DISK_INFO``) and addressed by handle (its index). The host storage of a disk is a
``denali.devices.disk.backend.Backend`` (a shared read-only base, an exclusive image, or a base
plus a copy-on-write overlay), opened from ``DiskSpec`` s by ``VmDisks.open``.

Life of a request (the completion protocol, from the guest's side: submit, then poll a
status word or wait for ``Irq.DISK``)::

    guest: int $0x80 (DISK_READ/WRITE/FLUSH)
      -> handler, inside the CPU's interrupt hook: checks handle, count, range, buffer,
         queue room; writes status = DISK_PENDING and queues the request (at most
         DISK_QUEUE per disk: FULL beyond); returns OK at once. Any refusal returns
         its code and also writes it to status.
      -> the disk's worker task (on the event loop, one request at a time, in order):
         copies the data out of guest memory (writes; a posted completion, so between
         slices), runs the backend's job in the executor (aiofiles), never blocking the
         loop
      -> completion, posted to the VM (``DeviceHost.post``: between slices, whatever
         thread runs them): copies the data into guest memory (reads), writes status =
         OK or IO, raises Irq.DISK (batched like every irq).

Why submit-and-complete rather than a hypercall that exits and blocks the VM: the guest
OS has threads, and a VM blocked in a hypercall could not run its other threads (its
TCP stack, say) while the host reads the disk; with a status word in the request itself
the guest needs no extra hypercall to learn what completed, and waiting is just
``irq_wait(DENALI_IRQ_DISK)`` until the word changes. The kernel touches guest memory
only between slices, so the guest never sees a half-written status or buffer.

Isolation: every guest pointer is checked with ``GuestMemory.check`` at submit and again
at completion; a VM that ended is never written to (its queued requests are dropped and
counted); host errors (a file truncated or removed under the VM, EIO) become ``IO`` for
that request only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.devices.base import SLOT_DISK, Device, DeviceHost, State
from denali.devices.disk.backend import Backend, open_backend
from denali.devices.disk.spec import DiskSpec
from denali.errors import ConfigError, DiskError
from denali.memory import PROT_R, PROT_RW, GuestMemory

_INFO: Final = abi.HYPERCALL_BY_NR[Hc.DISK_INFO].args.offsets()
_READ: Final = abi.HYPERCALL_BY_NR[Hc.DISK_READ].args.offsets()
_WRITE: Final = abi.HYPERCALL_BY_NR[Hc.DISK_WRITE].args.offsets()
_FLUSH: Final = abi.HYPERCALL_BY_NR[Hc.DISK_FLUSH].args.offsets()
assert _READ == _WRITE
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_RW: Final = struct.Struct("<IIQI")  # handle, count, block, buf
assert (_READ["handle"], _READ["count"], _READ["block"], _READ["buf"]) == (0, 4, 8, 16)
_BLOCK: Final = abi.DISK_BLOCK_SIZE
_NAME_LEN: Final = abi.DISK_NAME_MAX + 1

READ: Final = 0
WRITE: Final = 1
FLUSH: Final = 2
_KIND: Final = ("read", "write", "flush")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DiskRequest:
    """A disk request as a monitor sees it (already checked against the disk)."""

    kind: str
    """"read", "write" or "flush"."""
    handle: int
    block: int = 0
    count: int = 0
    buf: int = 0
    """Guest address of the data (reads and writes)."""


RequestFilter = Callable[[DiskRequest], "DiskRequest | int"]
"""A monitor's filter on disk requests: the request to submit (changed or not; checked
again), or a ``Result`` code to refuse it (written to its status word too)."""


@dataclass(slots=True)
class _Request:
    kind: int
    block: int
    count: int
    buf: int
    status_at: int


class Disk:
    """One disk of one VM: its backend, its bounded request queue and its worker task."""

    __slots__ = (
        "_op",
        "_queue",
        "_worker",
        "backend",
        "blocks",
        "handle",
        "host",
        "last_error",
        "last_io_error",
        "name",
        "outstanding",
        "readonly",
        "stats",
    )

    def __init__(self, handle: int, name: str, backend: Backend) -> None:
        self.host: DeviceHost | None = None
        """The VM's interface (set when the device is attached)."""
        self.handle = handle
        self.name = name
        self.backend = backend
        self.blocks = backend.blocks
        self.readonly = backend.readonly
        self.outstanding = 0
        """Requests accepted and not yet completed (at most ``DISK_QUEUE``)."""
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=abi.DISK_QUEUE)
        self._worker: asyncio.Task[None] | None = None
        self._op: asyncio.Future[tuple[int, bytes | None]] | None = None
        self.last_error: BaseException | None = None
        """The last unexpected exception a request met (a kernel bug); None normally."""
        self.last_io_error: OSError | None = None
        """The last host I/O error (what a guest saw as IO), for diagnostics."""
        self.stats = {
            "reads": 0,
            "writes": 0,
            "flushes": 0,
            "blocks_read": 0,
            "blocks_written": 0,
            "io_errors": 0,
            "full": 0,
            "dropped": 0,
            "internal_errors": 0,
        }

    # ---- submission (inside the CPU hook, on the loop thread) ----
    def submit(self, req: _Request) -> int:
        """Queue ``req`` (already checked); FULL when DISK_QUEUE requests are outstanding
        (accepted, and not yet completed as far as the guest can see)."""
        if self.outstanding >= abi.DISK_QUEUE:
            self.stats["full"] += 1
            return Result.FULL
        self._queue.put_nowait(req)  # cannot overflow: outstanding >= queued
        self.outstanding += 1
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"denali-disk-{self.name}"
            )
        return Result.OK

    # ---- the worker ----
    async def _run(self) -> None:
        while True:
            req = await self._queue.get()
            op = asyncio.ensure_future(self._execute(req))
            self._op = op
            # shielded: if this worker is cancelled (the VM ended) the job still runs to
            # its end, and aclose() waits for it before closing any descriptor
            status, data = await asyncio.shield(op)
            self._op = None
            self._complete(req, status, data)

    async def _execute(self, req: _Request) -> tuple[int, bytes | None]:
        try:
            if req.kind == READ:
                data = await self.backend.read(req.block, req.count)
                self.stats["reads"] += 1
                self.stats["blocks_read"] += req.count
                return Result.OK, data
            if req.kind == WRITE:
                out = await self._copy_out(req.buf, req.count * _BLOCK)
                if out is None:
                    return Result.FAULT, None
                await self.backend.write(req.block, out)
                self.stats["writes"] += 1
                self.stats["blocks_written"] += req.count
                return Result.OK, None
            await self.backend.flush()
            self.stats["flushes"] += 1
            return Result.OK, None
        except OSError as exc:
            self.stats["io_errors"] += 1
            self.last_io_error = exc
            # the first one is news; a guest retrying in a loop must not flood the log
            log.log(
                logging.WARNING if self.stats["io_errors"] == 1 else logging.DEBUG,
                "disk %s (%s): host I/O error in a %s request (the guest gets IO): %s",
                self.name,
                self.backend.where,
                _KIND[req.kind],
                exc,
            )
            return Result.IO, None
        except Exception as exc:  # a bug: fail this request only, and keep the evidence
            self.stats["internal_errors"] += 1
            self.last_error = exc
            log.log(
                logging.ERROR if self.stats["internal_errors"] == 1 else logging.DEBUG,
                "disk %s (%s): internal error in a %s request (the guest gets IO): %r",
                self.name,
                self.backend.where,
                _KIND[req.kind],
                exc,
                exc_info=exc,
            )
            return Result.IO, None

    async def _copy_out(self, addr: int, length: int) -> bytes | None:
        """The guest's bytes at [addr, addr+length), read between slices; None when the
        range is not readable (or the VM ended)."""
        assert self.host is not None
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def copy(mem: GuestMemory | None) -> None:
            if not fut.done():
                fut.set_result(
                    mem.read(addr, length) if mem is not None and mem.check(addr, length, PROT_R) else None
                )

        self.host.post(copy)
        return await fut

    def _complete(self, req: _Request, status: int, data: bytes | None) -> None:
        host = self.host
        assert host is not None

        def apply(mem: GuestMemory | None) -> None:
            # INVARIANT: a request counts as outstanding (against DISK_QUEUE, and as
            # work in flight that keeps the VM resident) until the guest can see its
            # status word change.
            self.outstanding -= 1
            if mem is None:  # the VM ended: nothing to tell it
                return
            st = status
            if data is not None:
                if mem.check(req.buf, len(data), PROT_RW):
                    mem.write(req.buf, data)
                else:
                    st = Result.FAULT
            if mem.check(req.status_at, 4, PROT_RW):
                _U32.pack_into(mem.buf, req.status_at, st)

        host.post(apply)
        host.raise_irq(Irq.DISK)

    async def _stop(self) -> None:
        """Stop the worker, let a running job finish, drop what is queued (counted)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        op, self._op = self._op, None
        if op is not None:
            await asyncio.gather(op, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait()
            self.stats["dropped"] += 1
        self.outstanding = 0


class Disks(Device):
    """The disk device of one VM: its disks by handle (their order in the specs) and name.

    Lifecycle: ``await Disks.open(specs)`` -> attached to the VM by its builder -> the
    guest's requests -> ``await aclose()`` once the VM has ended (idempotent; also safe
    while a request runs: it waits for that one job, drops the queued ones, then writes
    kept overlays' bitmaps and closes every file). ``aclose`` finishes its cleanup even
    if the task awaiting it is cancelled, so no descriptor is closed under a running job
    and no file stays open. It never raises for host I/O trouble: a kept overlay whose
    bitmap could not be saved (its file was truncated or removed) is closed anyway, the
    ``DiskError`` is appended to ``close_errors`` and logged (the writes since the guest's
    last flush are lost, as in a crash); ``Vm.wait()`` raises it to the host.

    State: the specs the disks were opened from (the files hold the data; the device
    must be idle, ``busy()`` False, when it is saved).
    """

    SLOT: ClassVar[int] = SLOT_DISK
    HYPERCALLS: ClassVar = {
        Hc.DISK_INFO: "hc_info",
        Hc.DISK_READ: "hc_read",
        Hc.DISK_WRITE: "hc_write",
        Hc.DISK_FLUSH: "hc_flush",
    }
    __slots__ = ("_closer", "above", "close_errors", "disks", "request_filter", "specs")

    def __init__(
        self,
        disks: Sequence[Disk],
        specs: Sequence[DiskSpec] = (),
        above: tuple[Disks, Sequence[int]] | None = None,
    ) -> None:
        self.disks: tuple[Disk, ...] = tuple(disks)
        self.specs: tuple[DiskSpec, ...] = tuple(specs)
        self._closer: asyncio.Task[None] | None = None
        self.close_errors: list[DiskError] = []
        self.request_filter: RequestFilter | None = None
        """Set by the monitor layer while a monitor interposes on disk requests."""
        self.above: tuple[Disks, tuple[int, ...]] | None = (
            None if above is None else (above[0], tuple(above[1]))
        )
        """A child VM's disks: the disk device they were passed down from and, for each
        handle here, its handle there. A request here meets this VM's monitors, then
        (with the handle of the disk above) those of every VM above, so a child never
        escapes an ancestor's disk policy."""

    def effective_filter(self) -> RequestFilter | None:
        """What a request passes through: this VM's monitors', then those above (None:
        nothing interposes)."""
        own = self.request_filter
        if self.above is None:
            return own
        parent, handles = self.above
        up = parent.effective_filter()
        if up is None:
            return own

        def through(req: DiskRequest) -> DiskRequest | int:
            if own is not None:
                out = own(req)
                if isinstance(out, int):
                    return out
                req = out
            if not 0 <= req.handle < len(handles):
                return Result.NODEV
            got = up(dataclasses.replace(req, handle=handles[req.handle]))
            if isinstance(got, int):
                return got
            if got.handle not in handles:  # a monitor above named a disk not passed down
                return Result.NODEV
            return dataclasses.replace(got, handle=handles.index(got.handle))

        return through

    def attach(self, host: DeviceHost) -> None:
        super().attach(host)
        for d in self.disks:
            d.host = host

    def busy(self) -> bool:
        return any(d.outstanding for d in self.disks)

    def save(self) -> State:
        return {"specs": [dataclasses.asdict(s) for s in self.specs]}

    @classmethod
    async def open(cls, specs: Sequence[DiskSpec]) -> Disks:
        """Open the storage of every spec; ``ConfigError``/``DiskError`` if any is unusable
        (then nothing stays open)."""
        if len(specs) > abi.DISK_MAX_DISKS:
            raise ConfigError(f"{len(specs)} disks: a VM has at most {abi.DISK_MAX_DISKS}")
        names = [s.disk_name for s in specs]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"two disks are named {name!r}: give them names (NAME=PATH)")
        backends: list[Backend] = []
        try:
            for spec in specs:
                backends.append(await open_backend(spec))
        except BaseException:
            for b in backends:
                await b.close()
            raise
        return cls([Disk(i, n, b) for i, (n, b) in enumerate(zip(names, backends, strict=True))], specs)

    def find(self, name: str) -> Disk | None:
        for d in self.disks:
            if d.name == name:
                return d
        return None

    def close_now(self) -> bool:
        return not self.disks

    async def aclose(self) -> None:
        if not self.disks:
            return
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._close_all())
        closer = self._closer
        try:
            await asyncio.shield(closer)
        except asyncio.CancelledError:
            if not closer.done():
                await asyncio.gather(closer, return_exceptions=True)
            raise

    async def _close_all(self) -> None:
        for d in self.disks:
            await d._stop()
        for d in self.disks:
            try:
                await d.backend.close()
            except DiskError as exc:
                self.close_errors.append(exc)
            except OSError as exc:
                self.close_errors.append(DiskError(f"disk {d.name}: closing: {exc}"))
        for err in self.close_errors:
            log.error("%s (writes since the guest's last flush are lost)", err)

    # ---- hypercalls ----
    def hc_info(self, mem: GuestMemory, arg: int) -> int:
        buf = mem.buf
        name_at = arg + _INFO["name"]
        raw = bytes(buf[name_at : name_at + _NAME_LEN])
        if raw[0] == 0:
            index = _U32.unpack_from(buf, arg + _INFO["index"])[0]
            if index >= len(self.disks):
                return Result.NODEV
            disk = self.disks[index]
            buf[name_at : name_at + _NAME_LEN] = disk.name.encode().ljust(_NAME_LEN, b"\0")
        else:
            nul = raw.find(b"\0")
            if nul < 0:
                return Result.INVAL
            found = self.find(raw[:nul].decode("latin-1"))
            if found is None:
                return Result.NODEV
            disk = found
        _U32.pack_into(buf, arg + _INFO["handle"], disk.handle)
        _U64.pack_into(buf, arg + _INFO["blocks"], disk.blocks)
        _U32.pack_into(buf, arg + _INFO["block_size"], _BLOCK)
        _U32.pack_into(buf, arg + _INFO["flags"], abi.DISK_F_READONLY if disk.readonly else 0)
        _U32.pack_into(buf, arg + _INFO["max_blocks"], abi.DISK_MAX_BLOCKS)
        _U32.pack_into(buf, arg + _INFO["queue"], abi.DISK_QUEUE)
        return Result.OK

    def _check_rw(
        self, mem: GuestMemory, handle: int, count: int, block: int, addr: int, write: bool
    ) -> Disk | int:
        if handle >= len(self.disks):
            return Result.NODEV
        disk = self.disks[handle]
        if write and disk.readonly:
            return Result.INVAL
        if count == 0 or count > abi.DISK_MAX_BLOCKS:
            return Result.INVAL
        if block >= disk.blocks or count > disk.blocks - block:
            return Result.INVAL
        if not mem.check(addr, count * _BLOCK, PROT_R if write else PROT_RW):
            return Result.FAULT
        return disk

    def _rw(self, mem: GuestMemory, arg: int, kind: int) -> int:
        buf = mem.buf
        handle, count, block, addr = _RW.unpack_from(buf, arg)
        status_at = arg + _READ["status"]
        disk = self._check_rw(mem, handle, count, block, addr, kind == WRITE)
        if isinstance(disk, Disk):
            filt = self.request_filter if self.above is None else self.effective_filter()
            if filt is not None:
                res = self._submit_filtered(
                    mem, filt, DiskRequest(_KIND[kind], handle, block, count, addr), status_at
                )
            else:
                res = disk.submit(_Request(kind, block, count, addr, status_at))
        else:
            res = disk
        _U32.pack_into(buf, status_at, abi.DISK_PENDING if res == Result.OK else res)
        return res

    def hc_read(self, mem: GuestMemory, arg: int) -> int:
        return self._rw(mem, arg, READ)

    def hc_write(self, mem: GuestMemory, arg: int) -> int:
        return self._rw(mem, arg, WRITE)

    def hc_flush(self, mem: GuestMemory, arg: int) -> int:
        buf = mem.buf
        handle = _U32.unpack_from(buf, arg + _FLUSH["handle"])[0]
        status_at = arg + _FLUSH["status"]
        filt = self.request_filter if self.above is None else self.effective_filter()
        if handle >= len(self.disks):
            res = int(Result.NODEV)
        elif filt is not None:
            res = self._submit_filtered(mem, filt, DiskRequest("flush", handle), status_at)
        else:
            res = self.disks[handle].submit(_Request(FLUSH, 0, 0, 0, status_at))
        _U32.pack_into(buf, status_at, abi.DISK_PENDING if res == Result.OK else res)
        return res

    def _submit_filtered(
        self, mem: GuestMemory, filt: RequestFilter, req: DiskRequest, status_at: int
    ) -> int:
        """Submit ``req`` as the monitors' filter ``filt`` returns it (checked again), or
        refuse it."""
        out = filt(req)
        if isinstance(out, int):
            return out
        if out.kind not in _KIND:
            return Result.INVAL
        kind = _KIND.index(out.kind)
        if kind == FLUSH:
            if out.handle >= len(self.disks):
                return Result.NODEV
            return self.disks[out.handle].submit(_Request(FLUSH, 0, 0, 0, status_at))
        disk = self._check_rw(mem, out.handle, out.count, out.block, out.buf, kind == WRITE)
        if not isinstance(disk, Disk):
            return disk
        return disk.submit(_Request(kind, out.block, out.count, out.buf, status_at))


async def open_disks(specs: Sequence[DiskSpec]) -> Disks:
    """``Disks.open(specs)``; with no specs, a device without disks (every request is
    then refused with NODEV, written to its status word as for a bad handle)."""
    if not specs:
        return Disks(())
    return await Disks.open(specs)
