"""Snapshot files: a paused VM's complete state in one versioned, checksummed file.

This module is the file format only; it knows nothing of VMs (``Vm.snapshot_state`` and
``Kernel.snapshot``/``restore``/``clone`` use it). Layout, integers little-endian::

    0            header (``_HEADER``), padded to one page; its own CRC-32 last
    4096 ...     sections, each where the header says, each with its CRC-32:
                 meta   JSON: the VM (identity, clock, interrupts, where it stopped),
                        its devices' ``save()`` state, and per-monitor state
                 cpu    ``CpuState.pack()``
                 image  the guest's ELF image, so a snapshot restores anywhere
                 runs   the stored page runs: (first page, count) as u32 pairs
    mem_offset   guest memory, ``mem_size`` bytes, page aligned: guest page n is at
                 mem_offset + n * 4096. Only the pages the VM touched are written; the
                 rest are holes (a sparse file; they read as zero). ``mem_crc`` is the
                 CRC-32 of the stored pages in run order.

The memory region has the shape of guest memory itself so that a restored VM maps it
private (``GuestMemory(size, fd, offset)``): pages are read from the file when first
touched, written pages become the VM's own, and every clone of one snapshot shares the
pages none of them wrote.

Checks on open (``open_snapshot``), each a ``SnapshotFormatError`` naming the problem:
the magic, the format version, the ABI version the snapshot was taken under (a guest
built for another ABI cannot continue), the header CRC, every section and page run
inside the file (truncation), and every CRC. Writes (``write_snapshot``) go to a
temporary file in the same directory, are fsynced and renamed into place: a failed
write (a full disk) leaves nothing at the path and raises ``SnapshotWriteError``.

Meta JSON carries bytes as ``{"$bytes": "<base64>"}`` (device state is plain data with
bytes, see ``denali.devices.base``). ``meta["monitors"]`` is the VM's monitor stack's
``MonitorStack.save()`` (each monitor's class name and plain-data state, nearest the VM
first; empty without monitors), given back by ``Kernel.restore``/``clone``.
"""

from __future__ import annotations

import base64
import json
import mmap
import os
import stat
import struct
import uuid
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiofiles.os

from denali import abi
from denali.errors import SnapshotFormatError, SnapshotWriteError

MAGIC: Final = b"DNLSNAP\x00"
FORMAT_VERSION: Final = 1
"""Version of this file layout; a change to it increments it."""
PAGE: Final = abi.PAGE_SIZE
_HEADER: Final = struct.Struct("<8sIIII" + "QQI" * 4 + "QQIII")
"""magic, format, abi, flags, page size; (offset, length, crc) of meta, cpu, image, runs;
mem_offset, mem_size, mem_crc, stored pages, header crc."""
_SECTIONS: Final = ("meta", "cpu", "image", "runs")
Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``; called from a worker thread."""


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot holds, as written or opened (plain data)."""

    path: str
    abi_version: int
    mem_size: int
    stored_pages: int
    file_bytes: int
    """Bytes of storage the file takes (allocated blocks, not its sparse size)."""


class SnapshotFile:
    """An opened, verified snapshot; holds its file open until ``close``. ``fd`` and
    ``mem_offset`` are what ``GuestMemory`` maps."""

    def __init__(
        self,
        path: str,
        fd: int,
        meta: dict[str, Any],
        cpu: bytes,
        image: bytes,
        runs: array[int],
        mem_offset: int,
        mem_size: int,
        info: SnapshotInfo,
    ) -> None:
        self.path = path
        self.fd = fd
        self.meta = meta
        self.cpu = cpu
        self.image = image
        self.runs = runs
        self.mem_offset = mem_offset
        self.mem_size = mem_size
        self.info = info
        self._refs = 1

    @property
    def stored_pages(self) -> int:
        return self.info.stored_pages

    def share(self) -> SnapshotFile:
        """One more holder (a VM whose memory maps this file); each calls ``close``."""
        if self.fd < 0:
            raise ValueError("snapshot file is closed")
        self._refs += 1
        return self

    def close(self) -> None:
        """Drop one holder; the file is closed when the last one closes (mappings made
        from it stay valid)."""
        self._refs -= 1
        if self._refs <= 0 and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- meta encoding


def _encode(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(obj)).decode()}
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"snapshot state must be plain data, not {type(obj).__name__}")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"$bytes"} and isinstance(obj["$bytes"], str):
            return base64.b64decode(obj["$bytes"], validate=True)
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def encode_meta(meta: dict[str, Any]) -> bytes:
    return json.dumps(_encode(meta), separators=(",", ":"), sort_keys=True).encode()


# ---------------------------------------------------------------- writing


def _align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@aiofiles.os.wrap
def _write_file(
    path: str,
    sections: dict[str, bytes],
    mem: mmap.mmap,
    runs: array[int],
    mem_size: int,
    progress: Progress | None,
) -> SnapshotInfo:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    at = PAGE
    layout: list[tuple[int, int, int]] = []
    for name in _SECTIONS:
        data = sections[name]
        layout.append((at, len(data), zlib.crc32(data)))
        at = _align(at + len(data))
    mem_offset = at
    stored = sum(runs[1::2])
    total = stored * PAGE
    done = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for (off, _n, _c), name in zip(layout, _SECTIONS, strict=True):
            _pwrite_all(fd, sections[name], off)
        os.ftruncate(fd, mem_offset + mem_size)
        crc = 0
        view = memoryview(mem)
        try:  # INVARIANT: no view of guest memory outlives this call
            for k in range(0, len(runs), 2):
                lo, hi = runs[k] * PAGE, (runs[k] + runs[k + 1]) * PAGE
                for chunk in range(lo, hi, 1 << 20):
                    with view[chunk : min(hi, chunk + (1 << 20))] as part:
                        crc = zlib.crc32(part, crc)
                        _pwrite_all(fd, part, mem_offset + chunk)
                        done += len(part)
                    if progress is not None:
                        progress(done, total)
        finally:
            view.release()
        fields: list[Any] = [MAGIC, FORMAT_VERSION, abi.ABI_VERSION, 0, PAGE]
        for entry in layout:
            fields.extend(entry)
        fields.extend((mem_offset, mem_size, crc, stored))
        head = _HEADER.pack(*fields, 0)
        head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
        _pwrite_all(fd, head, 0)
        os.fsync(fd)
        blocks = os.fstat(fd).st_blocks * 512
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    return SnapshotInfo(path, abi.ABI_VERSION, mem_size, stored, blocks)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"short write at offset {offset}")
        view = view[n:]
        offset += n


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


async def write_snapshot(
    path: str,
    meta: dict[str, Any],
    cpu: bytes,
    image: bytes,
    mem: mmap.mmap,
    runs: array[int],
    mem_size: int,
    progress: Progress | None = None,
) -> SnapshotInfo:
    """Write a snapshot of memory ``mem`` (only the page ``runs`` are stored) with its
    ``meta``, ``cpu`` and ``image`` sections to ``path`` (on a worker thread). Nothing is
    at ``path`` until the file is complete and durable. ``SnapshotWriteError`` when the
    host cannot write it (``TypeError`` for a meta that is not plain data)."""
    sections = {"meta": encode_meta(meta), "cpu": cpu, "image": image, "runs": runs.tobytes()}
    try:
        return await _write_file(path, sections, mem, runs, mem_size, progress)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise SnapshotWriteError(f"{path}: cannot write the snapshot: {why}", path) from None


# ---------------------------------------------------------------- reading


def _bad(path: str, what: str) -> SnapshotFormatError:
    return SnapshotFormatError(f"{path}: {what}", path)


def _read_exact(fd: int, n: int, offset: int, path: str, what: str) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise _bad(path, f"snapshot is truncated ({what} is incomplete)")
    return data


def _open_file(path: str, progress: Progress | None) -> SnapshotFile:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SnapshotFormatError(f"{path}: cannot open the snapshot: {exc.strerror}", path) from None
    try:
        return _verify(path, fd, progress)
    except BaseException:
        os.close(fd)
        raise


def _verify(path: str, fd: int, progress: Progress | None) -> SnapshotFile:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _bad(path, "not a regular file")
    head = os.pread(fd, _HEADER.size, 0)
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        raise _bad(path, "not a denali snapshot (bad magic)")
    if len(head) != _HEADER.size:
        raise _bad(path, "snapshot is truncated (no complete header)")
    fields = _HEADER.unpack(head)
    _magic, fmt, abi_version, _flags, page = fields[:5]
    if fmt != FORMAT_VERSION:
        raise _bad(path, f"snapshot format version {fmt} (this kernel reads version {FORMAT_VERSION})")
    if zlib.crc32(head[:-4]) != fields[-1]:
        raise _bad(path, "snapshot header is corrupt (checksum mismatch)")
    if abi_version != abi.ABI_VERSION:
        raise _bad(
            path,
            f"snapshot was taken under ABI version {abi_version}; this kernel runs ABI "
            f"version {abi.ABI_VERSION} (restore it with a kernel of that version)",
        )
    if page != PAGE:
        raise _bad(path, f"snapshot page size {page} (expected {PAGE})")
    sections: dict[str, bytes] = {}
    for i, name in enumerate(_SECTIONS):
        off, n, crc = fields[5 + 3 * i : 8 + 3 * i]
        if off + n > st.st_size:
            raise _bad(path, f"snapshot is truncated (its {name} section ends past the end of the file)")
        data = _read_exact(fd, n, off, path, f"its {name} section")
        if zlib.crc32(data) != crc:
            raise _bad(path, f"snapshot {name} section is corrupt (checksum mismatch)")
        sections[name] = data
    mem_offset, mem_size, mem_crc, stored = fields[17:21]
    if mem_offset % PAGE or mem_size % PAGE or not abi.MIN_MEMORY <= mem_size <= abi.MAX_MEMORY:
        raise _bad(path, "snapshot header is corrupt (bad memory layout)")
    if mem_offset + mem_size > st.st_size:
        raise _bad(path, "snapshot is truncated (its memory ends past the end of the file)")
    if len(sections["runs"]) % 8:
        raise _bad(path, "snapshot runs section is corrupt")
    runs = array("I")
    runs.frombytes(sections["runs"])
    pages = mem_size // PAGE
    if sum(runs[1::2]) != stored or any(runs[k] + runs[k + 1] > pages for k in range(0, len(runs), 2)):
        raise _bad(path, "snapshot runs section is corrupt (runs outside memory)")
    crc = 0
    done = 0
    for k in range(0, len(runs), 2):
        lo, hi = runs[k] * PAGE, (runs[k] + runs[k + 1]) * PAGE
        for chunk in range(lo, hi, 1 << 20):
            n = min(hi, chunk + (1 << 20)) - chunk
            crc = zlib.crc32(_read_exact(fd, n, mem_offset + chunk, path, "its memory"), crc)
            done += n
            if progress is not None:
                progress(done, stored * PAGE)
    if crc != mem_crc:
        raise _bad(path, "snapshot memory is corrupt (checksum mismatch)")
    try:
        meta = _decode(json.loads(sections["meta"]))
    except ValueError as exc:
        raise _bad(path, f"snapshot meta section is not valid ({exc})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "snapshot meta section is not valid (not an object)")
    info = SnapshotInfo(path, abi_version, mem_size, stored, st.st_blocks * 512)
    return SnapshotFile(path, fd, meta, sections["cpu"], sections["image"], runs, mem_offset, mem_size, info)


@aiofiles.os.wrap
def _open_thread(path: str, progress: Progress | None) -> SnapshotFile:
    return _open_file(path, progress)


async def open_snapshot(path: str, progress: Progress | None = None) -> SnapshotFile:
    """Open and verify the snapshot at ``path`` (on a worker thread; every check of the
    module docstring). ``SnapshotFormatError`` when it cannot be used."""
    return await _open_thread(path, progress)
