"""Live migration: a running VM moves to another kernel over a stream, keeping its MAC,
address and open connections.

    info = await migrate(kernel, vm, "/run/other-kernel.sock")   # the library call
    denali ctl PATH migrate ID --to OTHER_PATH                    # the same from the CLI

The source connects to the destination kernel's control API (``denali boot --api``) and
upgrades the connection to a WebSocket (``GET /v1/migrations/incoming``): the transfer
is a stream of binary messages between the two kernels, never a shared file, so the same
works between machines. The destination ends up with the VM as it was: same id, MAC,
command line, memory, CPU, devices (the NIC's queued frames too), its clock continuing.

**Pre-copy, then stop-and-copy** (as in Xen's and QEMU's live migration). While the VM
runs, its memory is tracked for writes (``GuestMemory.dirty``: the TLB hands the guest
every writable page read-only until its first store in a round, and the kernel marks
what it writes itself). Round 0 sends every page the VM has touched; each later round
sends the pages written during the one before. When a round leaves few pages (at most
``stop_pages``), stops shrinking, or after ``max_rounds``, the VM is paused at a slice
boundary, the last dirty pages and its state (the snapshot ``meta`` and ``CpuState``)
are sent, and the destination builds the VM, held paused (PREPARED). The source then
takes the VM's port off its LAN and says GO; the destination lets the VM run and
announces it on its LAN (a gratuitous ARP for each address the source's switch had
learned for it, so the switches on the joined LANs re-learn where the MAC is at once)
and confirms (STARTED); the source VM ends in state ``MIGRATED``. *Downtime* is from
the pause to STARTED.

**Faults.** Until GO the source owns the VM: if the peer cannot be reached, refuses, dies
or sends anything malformed, or the link drops or goes quiet (``timeout_s``), the source
stops tracking, resumes the VM (unless it was paused before) and puts its port back:
it runs on where it was, nothing lost, and ``MigrationError`` says what happened. The
destination drops everything it received (the memory, a VM held paused) when the stream
ends before GO. If the link drops after GO was sent and before STARTED came back, the
source cannot know whether the destination runs the VM: it keeps it paused and off its
LAN (so there are never two) and ``MigrationError`` says so; ``kill`` or ``resume`` it
there once it is known which.

**Untrusted input.** Each side checks every message of the other: its kind, its length,
page numbers inside the VM's memory, the image (``denali.loader``), the state (as a
snapshot's), the protocol and ABI versions. Anything else ends the migration with one
``MigrationError`` line; neither side's VMs are touched.

Messages: one kind byte, then its body. Source to destination: ``H`` hello (JSON: the
protocol and ABI versions, the VM's identity and sizes), ``I`` a piece of the ELF image,
``P`` pages (``<II`` first page and count, then the pages), ``S`` state (``<I`` the meta
JSON's length, the meta JSON, the ``CpuState``), ``F`` frames that reached the paused VM
after its state was taken (``<H`` length and frame, each), ``G`` go (``Gp``: the VM was
paused at the source and stays paused), ``E`` error (JSON). Destination
to source: ``A`` accepted, ``D`` prepared, ``K`` started, ``E`` error.

VMs with writable disks (read-write images, kept overlays) are not migrated (their disk
would be open in two kernels): ``MigrationError``. Read-only disks are reopened by path
at the destination, so the path must name the same image there.

**Monitors.** A VM under monitors (``denali.monitor``) keeps them: the hello names the
classes of its stack, the state message carries their saved state (``meta["monitors"]``,
as a snapshot does), and the destination stacks the monitors its API gives every VM it
starts (``ControlApi(monitors=...)``, ``denali boot --policy/--trace``) and hands them that
state before the VM runs. A destination with no monitors, or with monitors of other
classes, refuses at the hello: the VM never sheds its monitors by moving. A VM without
monitors gets the destination's, fresh, as any VM that kernel starts.

**Child VMs** (``denali.nesting``) do not move: a VM with live children (or child exit
events it has not read) is refused, since its subtree is not carried, and so is a child
VM itself (it lives inside its parent's quota and CPU group). A VM with a child-memory
grant and no children moves with its grant.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp
from aiohttp import web

from denali import abi
from denali.errors import ConfigError, DenaliError, ImageError, MigrationError, NetError, SubtreeError
from denali.loader import parse_image
from denali.memory import GuestMemory
from denali.net.ethernet import build_frame
from denali.snapshot import _decode, encode_meta
from denali.swap import resident_pages
from denali.vm import Vm, VmState, page_runs

if TYPE_CHECKING:
    from denali.kernel import Kernel
    from denali.monitor import Monitor

log = logging.getLogger(__name__)

PROTOCOL: Final = 1
"""Version of the message stream; both sides must speak the same."""
PAGE: Final = abi.PAGE_SIZE
PAGES_PER_MESSAGE: Final = 64
"""Pages per ``P`` message (256 KiB)."""
IMAGE_CHUNK: Final = 1 << 20
MAX_MESSAGE: Final = 2 << 20
"""Largest message either side accepts (a ``P`` message is 256 KiB and 8 bytes)."""
MAX_IMAGE: Final = 64 << 20
MAX_META: Final = 16 << 20
ROUTE: Final = "/v1/migrations/incoming"
_PAGES: Final = struct.Struct("<II")
_U32: Final = struct.Struct("<I")
_FRAME: Final = struct.Struct("<H")
_MAX_LATE: Final = 1024
"""Most frames that came for the paused VM the source forwards (an ``F`` message)."""
_KERNEL_PAGE: Final = abi.Layout.KERNEL_PAGE // PAGE
_ETH_ARP: Final = 0x0806
Progress = Callable[[int, int], None]
MonitorFactory = Callable[[], "Sequence[Monitor]"]


@dataclass
class MigrationInfo:
    """What a migration did (plain data; ``as_dict`` for JSON)."""

    vm: int
    to: str
    live: bool
    rounds: int = 0
    pages_sent: int = 0
    pages_final: int = 0
    """Pages sent while the VM was paused (the stop-and-copy)."""
    bytes_sent: int = 0
    total_s: float = 0.0
    downtime_s: float = 0.0
    round_pages: list[int] = field(default_factory=list)
    """Pages sent in each pre-copy round."""
    phases: dict[str, float] = field(default_factory=dict)
    """Where the downtime went: seconds from the pause to the end of each step
    (``paused``, ``state``, ``final_pages``, ``prepared``, ``started``)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "to": self.to,
            "live": self.live,
            "rounds": self.rounds,
            "pages_sent": self.pages_sent,
            "pages_final": self.pages_final,
            "bytes_sent": self.bytes_sent,
            "total_ms": round(self.total_s * 1000, 3),
            "downtime_ms": round(self.downtime_s * 1000, 3),
            "round_pages": self.round_pages,
            "phases_ms": {k: round(v * 1000, 3) for k, v in self.phases.items()},
        }


# ---------------------------------------------------------------- the channel


_CLOSE_S: Final = 0.25
"""How long closing the link waits for the peer's half of the handshake."""


class Channel(Protocol):
    """A message stream between the two kernels."""

    async def send(self, data: bytes) -> None: ...
    async def recv(self, quiet_s: float) -> bytes: ...
    async def close(self) -> None: ...


class WsChannel:
    """A ``Channel`` over an aiohttp WebSocket (either side)."""

    def __init__(
        self,
        ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.ws = ws
        self._session = session

    async def send(self, data: bytes) -> None:
        if self.ws.closed:
            raise MigrationError("the link to the peer is closed")
        try:
            await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise MigrationError(f"the link to the peer dropped ({exc})") from None

    async def recv(self, quiet_s: float) -> bytes:
        try:
            msg = await self.ws.receive(timeout=quiet_s)
        except TimeoutError:
            raise MigrationError(f"the peer sent nothing for {quiet_s:g} s") from None
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise MigrationError(f"the link to the peer dropped ({exc})") from None
        if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
            return bytes(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            raise MigrationError("the peer closed the link")
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise MigrationError(f"the link to the peer failed ({self.ws.exception()})")
        raise MigrationError("the peer sent a message that is not part of a migration")

    async def close(self) -> None:
        """Close the link; a peer that does not answer the closing handshake within
        ``_CLOSE_S`` is not waited for (a failing peer never holds the caller)."""
        try:
            await asyncio.wait_for(self.ws.close(), _CLOSE_S)
        except (ConnectionError, RuntimeError, aiohttp.ClientError, TimeoutError):
            pass
        if self._session is not None:
            await self._session.close()


async def connect(to: str, timeout_s: float) -> WsChannel:
    """Open the migration stream to the kernel serving its API on ``to``: a Unix socket
    path, or ``http://HOST:PORT`` for a kernel whose API listens on TCP."""
    if to.startswith(("http://", "https://")):
        connector: aiohttp.BaseConnector = aiohttp.TCPConnector()
        url = to.rstrip("/") + ROUTE
    else:
        connector = aiohttp.UnixConnector(path=to)
        url = f"http://denali{ROUTE}"
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=timeout_s)
    )
    try:
        ws = await session.ws_connect(url, max_msg_size=MAX_MESSAGE, autoping=True, heartbeat=None)
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        raise MigrationError(f"{to}: the kernel there does not take migrations (HTTP {exc.status})") from None
    except (aiohttp.ClientError, OSError) as exc:
        await session.close()
        why = getattr(exc, "os_error", None) or exc
        raise MigrationError(f"{to}: cannot connect to the destination kernel ({why})") from None
    except BaseException:
        await session.close()
        raise
    return WsChannel(ws, session)


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = _decode(json.loads(body))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise MigrationError(f"the peer's {what} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise MigrationError(f"the peer's {what} is not a JSON object")
    return data


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        text = str(data.get("message", "")) if isinstance(data, dict) else ""
    except (ValueError, RecursionError, UnicodeDecodeError):
        text = ""
    text = "".join(c if c.isprintable() else "?" for c in text)[:300]
    return text or "no reason given"


async def _expect(ch: Channel, kind: bytes, quiet_s: float, what: str) -> bytes:
    msg = await ch.recv(quiet_s)
    if msg[:1] == b"E":
        raise MigrationError(f"the destination refused: {_error_message(msg[1:])}")
    if msg[:1] != kind:
        raise MigrationError(f"the peer sent {msg[:1]!r} where {what} was expected")
    return msg[1:]


# ---------------------------------------------------------------- the source


def _check_migratable(kernel: Kernel, vm: Vm) -> None:
    if kernel.vms.get(vm.id) is not vm:
        raise MigrationError(f"VM {vm.id} is not a live VM of this kernel")
    if vm.state.final:
        raise MigrationError(f"VM {vm.id} is {vm.state.value}: it cannot be migrated")
    if vm.migrating:
        raise MigrationError(f"VM {vm.id} is being migrated already")
    if vm.group != vm.id:
        raise MigrationError(
            f"VM {vm.id} is a child VM of VM {vm.group}'s tree: a child VM is not migrated alone"
        )
    if vm.children is not None and not vm.children.close_now():
        raise MigrationError(
            f"VM {vm.id} has child VMs (or child exit events it has not read): a VM is "
            "not migrated with its subtree"
        )
    try:
        vm.check_no_subtree("a migration")
    except SubtreeError as exc:
        raise MigrationError(str(exc)) from None
    if vm.disks is not None:
        for spec in vm.disks.specs:
            if spec.mode in ("rw", "overlay-keep"):
                raise MigrationError(
                    f"VM {vm.id}: disk {spec.path} is writable ({spec.mode}); VMs with "
                    "writable disks are not migrated"
                )
        for disk in vm.disks.disks:
            overlay = getattr(disk.backend, "overlay", None)
            if overlay is not None and overlay.blocks_held():
                raise MigrationError(
                    f"VM {vm.id}: disk {disk.name} has writes in a throwaway overlay, "
                    "which a migration does not carry"
                )


async def _send_pages(ch: Channel, mem: Any, pages: bytes | bytearray, info: MigrationInfo) -> int:
    """Send the pages whose byte in ``pages`` is 1 (the kernel page never: it is rebuilt
    from the CPU state); the number sent. ``mem`` is the memory's mmap."""
    pages = bytearray(pages)
    pages[_KERNEL_PAGE] = 0
    runs = page_runs(pages)
    sent = 0
    for k in range(0, len(runs), 2):
        first, count = runs[k], runs[k + 1]
        for at in range(first, first + count, PAGES_PER_MESSAGE):
            n = min(PAGES_PER_MESSAGE, first + count - at)
            body = b"P" + _PAGES.pack(at, n) + mem[at * PAGE : (at + n) * PAGE]
            await ch.send(body)
            sent += n
            info.bytes_sent += len(body)
    info.pages_sent += sent
    return sent


def _touched(vm: Vm, mem: GuestMemory) -> bytearray:
    """Pages the VM has: those resident, and a restored VM's snapshot pages."""
    present = bytearray(resident_pages(mem.address, mem.size))
    for i, b in enumerate(present):
        present[i] = b & 1
    origin = vm.origin
    if origin is not None:
        runs = origin.runs
        for k in range(0, len(runs), 2):
            present[runs[k] : runs[k] + runs[k + 1]] = b"\1" * runs[k + 1]
    return present


async def migrate(
    kernel: Kernel,
    vm: Vm,
    to: str,
    *,
    max_rounds: int = 30,
    stop_pages: int = 64,
    timeout_s: float = 10.0,
    progress: Progress | None = None,
) -> MigrationInfo:
    """Move running ``vm`` of ``kernel`` to the kernel whose control API is at ``to`` (a
    Unix socket path, or ``http://HOST:PORT``); see the module docstring. Returns when
    the VM runs there (this one then ends in state MIGRATED). ``progress(done, total)``
    counts pages. ``MigrationError`` when it does not happen: the VM then runs on here
    as it was (paused stays paused)."""
    _check_migratable(kernel, vm)
    vm.migrating = True
    try:
        return await _migrate(kernel, vm, to, max_rounds, stop_pages, timeout_s, progress)
    finally:
        vm.migrating = False


async def _migrate(
    kernel: Kernel,
    vm: Vm,
    to: str,
    max_rounds: int,
    stop_pages: int,
    timeout_s: float,
    progress: Progress | None,
) -> MigrationInfo:
    began = time.perf_counter()
    info = MigrationInfo(vm.id, to, live=False)
    was_paused = vm.paused
    try:
        ch = await connect(to, timeout_s)
    except MigrationError as exc:
        raise MigrationError(f"VM {vm.id}: migration failed: {exc}; it runs on here") from None
    paused_here = detached = go_sent = False
    tracked = False
    port = vm.nic
    try:
        image = await _image_of(vm)
        hello = {
            "protocol": PROTOCOL,
            "abi": abi.ABI_VERSION,
            "id": vm.id,
            "image": vm.image.name,
            "mem_size": vm.mem_size,
            "mac": vm.mac.hex(),
            "image_size": len(image),
            "monitors": _monitor_names(vm),
        }
        await ch.send(b"H" + json.dumps(hello).encode())
        for at in range(0, len(image), IMAGE_CHUNK):
            await ch.send(b"I" + image[at : at + IMAGE_CHUNK])
        await _expect(ch, b"A", timeout_s, "accepted")
        total = vm.mem_size // PAGE
        if not was_paused:
            tracked = await vm.track_dirty()
        dirty: bytearray | None = None
        if tracked:
            info.live = True
            mem = vm.memory
            assert mem is not None
            await vm.take_dirty()  # round 0 starts: what is written from now on is resent
            dirty = _touched(vm, mem)
            prev = None
            while dirty is not None:
                n = await _send_pages(ch, mem.buf, dirty, info)
                info.round_pages.append(n)
                info.rounds += 1
                if progress is not None:
                    progress(info.pages_sent, total)
                dirty = await vm.take_dirty()
                if dirty is None:
                    break
                left = dirty.count(1)
                if (
                    left <= stop_pages
                    or info.rounds >= max_rounds
                    or (prev is not None and left >= prev and info.rounds >= 4)
                ):
                    break
                prev = left
            if dirty is None or vm.state.final:
                raise MigrationError(f"VM {vm.id} ended ({vm.state.value}) during its migration")
        pause_at = time.perf_counter()
        if not was_paused:
            await vm.pause()
            paused_here = True
        info.phases["paused"] = time.perf_counter() - pause_at
        try:
            state = await vm.snapshot_state()
        except SubtreeError as exc:  # it made a child during the pre-copy
            raise MigrationError(str(exc)) from None
        info.phases["state"] = time.perf_counter() - pause_at
        try:
            meta, cpu = state.meta, state.cpu.pack()
            stack = _stack_of(vm)
            if _monitor_names(vm) != hello["monitors"]:
                raise MigrationError(f"VM {vm.id}'s monitor stack changed during its migration")
            if stack is not None and stack.monitors:  # the monitors' state goes with it
                meta["monitors"] = stack.save()
            if tracked:
                last = await vm.take_dirty()
                if last is None or dirty is None or vm.memory is None:
                    raise MigrationError(f"VM {vm.id} ended ({vm.state.value}) during its migration")
                final = int.from_bytes(dirty, "little") | int.from_bytes(last, "little")
                info.pages_final = await _send_pages(
                    ch, vm.memory.buf, final.to_bytes(len(last), "little"), info
                )
            else:  # not resident (swapped out, a lazy clone) or paused: stop and copy all
                page_map = bytearray(vm.mem_size // PAGE)
                runs = state.runs
                for k in range(0, len(runs), 2):
                    page_map[runs[k] : runs[k] + runs[k + 1]] = b"\1" * runs[k + 1]
                info.pages_final = await _send_pages(ch, state.memory, page_map, info)
        finally:
            if state.scratch is not None:
                state.scratch.close()
        info.phases["final_pages"] = time.perf_counter() - pause_at
        ips = [ip.hex() for ip in kernel.switch.addresses(port)] if port is not None else []
        saved_rx = len(meta["devices"].get("nic", {}).get("rx", ()))
        meta = {**meta, "migration": {"addresses": ips}}
        body = encode_meta(meta)
        await ch.send(b"S" + _U32.pack(len(body)) + body + cpu)
        await _expect(ch, b"D", timeout_s, "prepared")
        info.phases["prepared"] = time.perf_counter() - pause_at
        if vm.state is not VmState.PAUSED:
            raise MigrationError(f"VM {vm.id} is {vm.state.value}: the migration was given up")
        late: tuple[bytes, ...] = ()
        if port is not None and port.switch is not None:
            late = port.pending_frames()[saved_rx:]  # came while paused: they go too
            kernel.switch.detach(port)
            detached = True
        if late:
            await ch.send(b"F" + b"".join(_FRAME.pack(len(f)) + f for f in late[:_MAX_LATE]))
        await ch.send(b"Gp" if was_paused else b"G")  # a paused VM stays paused there
        go_sent = True
        await _expect(ch, b"K", timeout_s, "started")
        info.downtime_s = info.phases["started"] = time.perf_counter() - pause_at
        info.total_s = time.perf_counter() - began
        if progress is not None:
            progress(total, total)
        vm.untrack_dirty()
        vm.end_migrated()
        log.info(
            "VM %d migrated to %s: %d rounds, %d pages, downtime %.1f ms",
            vm.id,
            to,
            info.rounds,
            info.pages_sent,
            info.downtime_s * 1000,
        )
        return info
    except BaseException as exc:
        if tracked:
            vm.untrack_dirty()
        if go_sent:  # the destination may run it: never two of it on the LAN
            log.error("VM %d: migration to %s: no confirmation after GO; kept paused, off the LAN", vm.id, to)
            if isinstance(exc, MigrationError):
                raise MigrationError(
                    f"VM {vm.id}: the destination was told to start it but did not "
                    f"confirm ({exc}); it is kept paused here and off the LAN: kill it "
                    "if the destination runs it"
                ) from None
            raise
        if detached and port is not None and port.switch is None and not vm.state.final:
            kernel.switch.attach(port)
        if paused_here and not vm.state.final:
            vm.resume()
        with _quiet():
            if isinstance(exc, MigrationError):
                await ch.send(b"E" + json.dumps({"message": str(exc)}).encode())
        if isinstance(exc, MigrationError):
            raise MigrationError(f"VM {vm.id}: migration to {to} failed: {exc}; it runs on here") from None
        if isinstance(exc, DenaliError):
            raise MigrationError(f"VM {vm.id}: migration to {to} failed: {exc}; it runs on here") from None
        raise
    finally:
        await ch.close()


class _quiet:
    """``with _quiet():`` a best-effort step whose failure does not matter."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, Exception)


def _stack_of(vm: Vm) -> Any:
    """The VM's ``MonitorStack``, or None."""
    from denali.monitor.stack import MonitorStack

    ip = vm._interposer
    return ip if isinstance(ip, MonitorStack) else None


def _monitor_names(vm: Vm) -> list[str]:
    """The classes of the VM's monitors, nearest the VM first (as ``MonitorStack.save``)."""
    stack = _stack_of(vm)
    return [type(m).__qualname__ for m in stack.monitors] if stack is not None else []


async def _image_of(vm: Vm) -> bytes:
    from denali.kernel import _image_bytes

    try:
        return await _image_bytes(vm)
    except DenaliError as exc:
        raise MigrationError(str(exc)) from None


# ---------------------------------------------------------------- the destination


async def receive(
    kernel: Kernel,
    ch: Channel,
    *,
    timeout_s: float = 10.0,
    peer: str = "peer",
    monitors: MonitorFactory | None = None,
) -> Vm | None:
    """Take one VM migrating in on ``ch`` (the destination's side; the API's WebSocket
    route calls this). Returns the VM, running, or None when the source gave up; every
    failure is sent to the source and logged at info level, and leaves nothing here.
    ``monitors``: makes the monitor stack of a VM this kernel takes in (the API's
    factory); a VM that runs under monitors is refused without one, or when its
    monitors are of other classes (module docstring, "Monitors")."""
    mem: GuestMemory | None = None
    vm: Vm | None = None
    try:
        head = await ch.recv(timeout_s)
        if head[:1] != b"H":
            raise MigrationError("the stream does not begin with a migration hello")
        hello = _json(head[1:], "hello")
        proto, abi_version = hello.get("protocol"), hello.get("abi")
        if proto != PROTOCOL:
            raise MigrationError(f"migration protocol {proto!r}; this kernel speaks version {PROTOCOL}")
        if abi_version != abi.ABI_VERSION:
            raise MigrationError(
                f"the VM runs under ABI version {abi_version!r}; this kernel runs ABI "
                f"version {abi.ABI_VERSION}"
            )
        try:
            vm_id, mem_size, image_size = int(hello["id"]), int(hello["mem_size"]), int(hello["image_size"])
            mac = bytes.fromhex(str(hello["mac"]))
        except (KeyError, TypeError, ValueError):
            raise MigrationError("the hello lacks the VM's id, memory size, MAC or image size") from None
        if not abi.MIN_MEMORY <= mem_size <= abi.MAX_MEMORY or mem_size % PAGE:
            raise MigrationError(f"memory size {mem_size} is not one a VM can have")
        if not 0 < image_size <= MAX_IMAGE or len(mac) != 6:
            raise MigrationError("the hello's image size or MAC is not valid")
        kernel.check_free(vm_id, mac, f"VM {vm_id}")
        own = _monitors_for(vm_id, hello.get("monitors", []), monitors)
        image = bytearray()
        while len(image) < image_size:
            msg = await ch.recv(timeout_s)
            if msg[:1] != b"I" or len(image) + len(msg) - 1 > image_size:
                raise MigrationError("the image does not arrive as the hello announced")
            image += msg[1:]
        try:
            img = parse_image(bytes(image), f"VM {vm_id}:image", str(hello.get("image", "migrated")))
            img.check_fits(mem_size)
        except ImageError as exc:
            raise MigrationError(str(exc)) from None
        try:
            mem = GuestMemory(mem_size)
        except (OSError, ValueError) as exc:
            raise MigrationError(f"no memory for the VM ({exc})") from None
        await ch.send(b"A")
        pages = mem_size // PAGE
        buf = mem.buf
        received = 0
        while True:
            msg = await ch.recv(timeout_s)
            kind = msg[:1]
            if kind == b"P":
                if len(msg) < 1 + _PAGES.size:
                    raise MigrationError("a page message is truncated")
                first, count = _PAGES.unpack_from(msg, 1)
                if count == 0 or first + count > pages or len(msg) != 1 + _PAGES.size + count * PAGE:
                    raise MigrationError(
                        f"a page message is malformed (pages {first}+{count} of {pages}, {len(msg)} bytes)"
                    )
                buf[first * PAGE : (first + count) * PAGE] = memoryview(msg)[1 + _PAGES.size :]
                received += count
            elif kind == b"S":
                if len(msg) < 1 + _U32.size:
                    raise MigrationError("the state message is truncated")
                (n,) = _U32.unpack_from(msg, 1)
                if n > MAX_META or 1 + _U32.size + n > len(msg):
                    raise MigrationError("the state message is malformed")
                meta = _json(msg[1 + _U32.size : 1 + _U32.size + n], "state")
                cpu = msg[1 + _U32.size + n :]
                saved = meta.get("vm")
                if (
                    not isinstance(saved, dict)
                    or saved.get("id") != vm_id
                    or saved.get("mem_size") != mem_size
                ):
                    raise MigrationError("the state is of another VM than the hello's")
                ips = _addresses(meta)
                try:
                    vm = await kernel.adopt(
                        meta,
                        cpu,
                        img,
                        mem,
                        paused=True,
                        image_data=bytes(image),
                        where=f"VM {vm_id} from {peer}",
                        monitors=own,
                    )
                except ConfigError as exc:
                    raise MigrationError(str(exc)) from None
                finally:
                    mem = None  # adopt owns it now, also when it raised
                await ch.send(b"D")
                msg = await ch.recv(timeout_s)
                if msg[:1] == b"F":
                    frames = _frames(msg[1:])
                    if vm.nic is not None:
                        vm.nic.refill(frames)
                    msg = await ch.recv(timeout_s)
                kind = msg[:1]
                if kind == b"E":
                    log.info("migration of VM %d from %s given up by the source before GO", vm_id, peer)
                    return None  # the finally below ends the held VM
                if kind != b"G" or msg not in (b"G", b"Gp"):
                    raise MigrationError(f"the peer sent {kind!r} where GO was expected")
                if msg == b"G":
                    vm.resume()
                _announce(kernel, vm, ips)
                log.info("VM %d migrated in from %s (%d pages)", vm_id, peer, received)
                started, vm = vm, None
                with _quiet():
                    await ch.send(b"K")
                return started
            elif kind == b"E":
                log.info("migration from %s given up by the source: %s", peer, _error_message(msg[1:]))
                return None
            else:
                raise MigrationError(f"the peer sent a message of unknown kind {kind!r}")
    except MigrationError as exc:
        log.info("migration from %s refused: %s", peer, exc)
        with _quiet():
            await ch.send(b"E" + json.dumps({"message": str(exc)}).encode())
        return None
    except DenaliError as exc:
        log.info("migration from %s refused: %s", peer, exc)
        with _quiet():
            await ch.send(b"E" + json.dumps({"message": str(exc)}).encode())
        return None
    finally:
        if mem is not None:
            mem.close()
        if vm is not None and not vm.state.final:  # not started: nothing of it stays here
            vm.kill()


def _monitors_for(vm_id: int, names: object, factory: MonitorFactory | None) -> Sequence[Monitor]:
    """The monitors a VM migrating in gets here: ``factory``'s, which must be of the
    classes ``names`` (the source's stack, nearest the VM first) when it has any;
    ``MigrationError`` otherwise."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > 64:
        raise MigrationError("the hello's monitor list is not a list of class names")
    own = list(factory()) if factory is not None else []
    if names and not own:
        raise MigrationError(
            f"VM {vm_id} runs under monitors ({', '.join(names)}) and this kernel has none "
            "for the VMs it takes in; it would run unmonitored here"
        )
    have = [type(m).__qualname__ for m in own]
    if names and have != names:
        raise MigrationError(
            f"VM {vm_id} runs under monitors ({', '.join(names)}); this kernel's are ({', '.join(have)})"
        )
    return own


def _frames(body: bytes) -> list[bytes]:
    """The frames of an ``F`` message (``<H`` length, then the frame, each)."""
    frames: list[bytes] = []
    at = 0
    while at < len(body) and len(frames) < _MAX_LATE:
        if at + _FRAME.size > len(body):
            raise MigrationError("a frames message is truncated")
        (n,) = _FRAME.unpack_from(body, at)
        at += _FRAME.size
        if not 0 < n <= abi.NET_MTU or at + n > len(body):
            raise MigrationError("a frames message is malformed")
        frames.append(body[at : at + n])
        at += n
    return frames


def _addresses(meta: dict[str, Any]) -> list[bytes]:
    raw = meta.get("migration", {})
    ips = raw.get("addresses", []) if isinstance(raw, dict) else []
    out = []
    for ip in ips[:16] if isinstance(ips, list) else []:
        try:
            b = bytes.fromhex(str(ip))
        except ValueError:
            continue
        if len(b) == 4:
            out.append(b)
    return out


def _announce(kernel: Kernel, vm: Vm, ips: list[bytes]) -> None:
    """Announce ``vm`` on this kernel's LAN from its own port: a gratuitous ARP request for
    each of its addresses (an ARP probe from 0.0.0.0 without one), flooded past ARP
    suppression (``Switch.announce``), so every switch of the joined LANs learns where its
    MAC is now."""
    port = vm.nic
    if port is None:
        return
    mac = vm.mac
    for ip in ips or [bytes(4)]:
        arp = b"".join((b"\x00\x01\x08\x00\x06\x04\x00\x01", mac, ip, bytes(6), ip))
        try:
            kernel.switch.announce(port, build_frame(b"\xff" * 6, mac, _ETH_ARP, arp))
        except NetError as exc:  # the VM ended at once: nothing to announce
            log.info("VM %d: not announced (%s)", vm.id, exc)
            return
