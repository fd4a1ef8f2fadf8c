"""The virtual switched Ethernet LAN: a learning switch that forwards frames between ports.

What it does with each frame taken from a port's ingress queue, in order:

1. shorter than 14 bytes, or a multicast source address: malformed, dropped;
2. source check: a port with a fixed MAC may send only from it; a port without one may
   not use another port's fixed MAC (both: spoofed, dropped). Otherwise the source is
   learned (or refreshed) for the ingress port;
3. destination: broadcast/multicast and unknown unicast are flooded to every port but
   the ingress one; known unicast goes to its one port only (a lookup in a dict, O(1));
   unicast whose port is the ingress port is dropped (loopback);
4. a capture, when running, gets a copy of the frame (see ``denali.net.pcap``).

ARP suppression (``SwitchConfig.arp_suppress``, on by default; Linux bridges call it
``neigh_suppress``): the switch keeps IPv4-to-MAC bindings learned from the sender
fields of ARP frames (only when the sender hardware address is the frame's checked
source). The first port to claim an address keeps it while it stays attached; a claim
by another port is forwarded as usual but not learned (counted as ``arp_conflicts``).
An ARP request for a bound address of another port is answered by the switch itself,
from the bound MAC, to the asking port only; an announcement (a request whose sender
and target address are the same) is learned and not flooded, unless the address was
last bound to another MAC (a VM reusing a departed VM's address): then it is flooded,
so that stale caches elsewhere are updated. Only requests for unknown addresses are
flooded. Without this, every ARP broadcast on a LAN of 10,000
VMs would wake (and swap in) 10,000 VMs.

Address table: fixed MACs are pinned when their port attaches (they never age, never
move, never get evicted). Other source addresses are learned with ageing: an address
not seen for ``ageing_s`` is forgotten, so frames to it are flooded again. The learned
table holds at most ``max_macs`` entries; when full, the least recently seen entries are
evicted (counted). It is kept in least-recently-seen order, so ageing and eviction touch
only the entries they remove.

Scheduling (Denali: "transmit queues are drained round-robin"): a port whose ingress
queue goes from empty to non-empty joins a FIFO ready queue and sets an event. The drain
task takes up to ``batch`` frames from the first ready port, puts the port back at the
end if frames remain, and so on; after ``frames_per_yield`` frames, or when no port is
ready, it yields to the event loop. A port flooding the switch therefore delays another
port's frame by at most one batch per other ready port, and an idle switch waits on its
event and costs no CPU.

State machine::

    created --start()/__aenter__--> running --aclose()/__aexit__--> closed
       |                                                              ^
       +----------------------------aclose()--------------------------+

created: ports may attach and submit; frames wait (bounded) until the switch starts.
running: the drain task forwards. closed: the task is stopped, frames still queued are
dropped (``drop_link_down``), every port is detached, a capture is stopped; ``attach``
and ``start`` raise ``NetError``, and ``submit`` returns False. ``aclose`` is idempotent.

Every method runs on the event loop's thread. The caller owns the loop: the switch only
creates its drain task in the running loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from enum import Enum
from itertools import islice
from typing import Any, Final

from denali.abi import NET_MAX_BATCH
from denali.errors import ConfigError, NetError
from denali.net.ethernet import HEADER_LEN, MAC_LEN, MAX_FRAME, SRC_OFFSET, as_mac
from denali.net.impair import LinkSpec
from denali.net.pcap import DEFAULT_QUEUE_FRAMES, PcapWriter
from denali.net.port import Attachment, Port, PortStats

log = logging.getLogger(__name__)

_SRC_END: Final = SRC_OFFSET + MAC_LEN
_ETH_ARP: Final = b"\x08\x06"
_ARP_ETH_IPV4: Final = b"\x00\x01\x08\x00\x06\x04"
"""Start of an Ethernet/IPv4 ARP header: htype, ptype, hlen, plen."""
_ARP_END: Final = HEADER_LEN + 28
_NO_IP: Final = bytes(4)
_MIN_FRAME: Final = 60


@dataclass(frozen=True)
class SwitchConfig:
    """Configuration of a switch; ``ConfigError`` on out-of-range values."""

    ageing_s: float = 300.0
    """Seconds after which a learned address not seen as a source is forgotten."""
    max_macs: int = 65536
    """Bound of the learned address table (pinned fixed MACs are not counted)."""
    batch: int = NET_MAX_BATCH
    """Frames taken from one port per turn of the round-robin."""
    frames_per_yield: int = 512
    """Frames forwarded before the drain task yields to the event loop."""
    arp_suppress: bool = True
    """Answer ARP requests for known addresses in the switch (see the module docstring)."""
    arp_per_vm: int = 16
    """Addresses one port with a fixed MAC (a VM) may have bound at once; further claims
    are forwarded but not learned, so one guest cannot fill the table for everyone."""

    def __post_init__(self) -> None:
        if not (self.ageing_s > 0 and math.isfinite(self.ageing_s)):
            raise ConfigError(f"ageing_s must be a positive number of seconds, not {self.ageing_s}")
        if self.max_macs < 1:
            raise ConfigError(f"max_macs must be at least 1, not {self.max_macs}")
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, not {self.batch}")
        if self.frames_per_yield < 1:
            raise ConfigError(f"frames_per_yield must be at least 1, not {self.frames_per_yield}")
        if self.arp_per_vm < 1:
            raise ConfigError(f"arp_per_vm must be at least 1, not {self.arp_per_vm}")


class SwitchState(Enum):
    """Where a switch is in its life; see the module docstring."""

    CREATED = "created"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True)
class SwitchStats:
    """A snapshot of a switch's counters (``Switch.stats()``); plain data."""

    state: str
    ports: int
    frames: int
    """Frames taken from ingress queues."""
    unicast: int
    """Frames forwarded to exactly one known port."""
    flooded: int
    """Frames flooded (broadcast, multicast, unknown unicast)."""
    unknown_unicast: int
    """Of the flooded frames, those with an unknown unicast destination."""
    deliveries: int
    """Frame copies handed to ports (``deliver`` calls)."""
    drop_malformed: int
    drop_spoofed: int
    drop_loopback: int
    drop_link_down: int
    """Frames discarded from ingress queues by detach or close."""
    port_errors: int
    """Exceptions raised by ports' ``deliver`` (a port bug; the frame is lost for that port)."""
    fdb_pinned: int
    fdb_learned: int
    fdb_moves: int
    """Learned addresses that moved to another port."""
    fdb_expired: int
    fdb_evictions: int
    capture_written: int
    capture_dropped: int
    arp_bindings: int
    """IPv4 addresses the switch knows the MAC of (ARP suppression)."""
    arp_answered: int
    """ARP requests the switch answered itself instead of flooding them."""
    arp_announcements: int
    """Announcements (gratuitous ARP) learned and not flooded."""
    arp_conflicts: int
    """Claims of an address bound to another port (forwarded, not learned)."""
    drain_passes: int
    """Times the drain task ran between two yields to the loop (0 growth while idle)."""
    port_stats: dict[str, PortStats]

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as nested dicts (JSON-ready)."""
        out = asdict(self)
        out["port_stats"] = {name: st.as_dict() for name, st in self.port_stats.items()}
        return out


class _Learned:
    """A learned address: its port and when it was last seen as a source."""

    __slots__ = ("att", "seen")

    def __init__(self, att: Attachment, seen: float) -> None:
        self.att = att
        self.seen = seen


class _Counters:
    __slots__ = (
        "arp_announced",
        "arp_answered",
        "arp_conflicts",
        "deliveries",
        "drop_link_down",
        "drop_loopback",
        "drop_malformed",
        "drop_spoofed",
        "evictions",
        "expired",
        "flooded",
        "frames",
        "moves",
        "passes",
        "port_errors",
        "unicast",
        "unknown",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    arp_announced: int
    arp_answered: int
    arp_conflicts: int
    frames: int
    unicast: int
    flooded: int
    unknown: int
    deliveries: int
    drop_malformed: int
    drop_spoofed: int
    drop_loopback: int
    drop_link_down: int
    port_errors: int
    moves: int
    expired: int
    evictions: int
    passes: int


class _CaptureStart:
    """What ``Switch.capture`` returns: await it, or use it as an async context manager."""

    __slots__ = ("_switch", "_writer")

    def __init__(self, switch: Switch, writer: PcapWriter) -> None:
        self._switch = switch
        self._writer = writer

    def __await__(self) -> Generator[Any, None, PcapWriter]:
        return self._switch._start_capture(self._writer).__await__()

    async def __aenter__(self) -> PcapWriter:
        return await self._switch._start_capture(self._writer)

    async def __aexit__(self, *exc: object) -> None:
        if self._switch._capture is self._writer:
            await self._switch.stop_capture()
        else:
            await self._writer.stop()


class Switch:
    """A learning Ethernet switch; see the module docstring for behaviour and states.

    ``clock`` returns monotonic seconds (default ``time.monotonic``); tests inject one
    to drive ageing. It must never go backwards.
    """

    def __init__(
        self,
        config: SwitchConfig | None = None,
        *,
        name: str = "lan0",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else SwitchConfig()
        self.name = name
        self._clock = clock
        self._state = SwitchState.CREATED
        self._names: dict[str, Attachment] = {}
        self._links: dict[Attachment, None] = {}
        """Attached ports in attach order (a dict: O(1) attach and detach)."""
        self._flood_to: tuple[Attachment, ...] | None = ()
        """``_links`` as a tuple for flooding; None when it must be rebuilt."""
        self._arp: dict[bytes, tuple[bytes, Attachment | None]] = {}
        """ARP suppression: IPv4 address -> (MAC, port that claimed it; None once it left)."""
        self._arp_owned: dict[Attachment, list[bytes]] = {}
        self._pinned: dict[bytes, Attachment] = {}
        self._fdb: dict[bytes, _Learned] = {}
        """INVARIANT: ordered by ``seen``, oldest first (refreshing moves an entry to the end)."""
        self._next_expiry = math.inf
        """No learned entry expires before this time (the oldest entry's seen + ageing_s)."""
        self._ready: deque[Attachment] = deque()
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._capture: PcapWriter | None = None
        self._c = _Counters()
        self._lan_link: LinkSpec | None = None

    def __repr__(self) -> str:
        return f"<Switch {self.name} {self._state.value} ports={len(self._links)}>"

    # ---- lifecycle ----
    @property
    def state(self) -> SwitchState:
        return self._state

    def _is_closed(self) -> bool:
        return self._state is SwitchState.CLOSED

    async def __aenter__(self) -> Switch:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the drain task in the running loop; no-op when running, ``NetError`` when closed."""
        if self._state is SwitchState.CLOSED:
            raise NetError(f"switch {self.name} is closed")
        if self._state is SwitchState.RUNNING:
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"denali-switch {self.name}")
        self._state = SwitchState.RUNNING

    async def aclose(self) -> None:
        """Stop forwarding, detach every port, stop a capture; idempotent.

        Raises ``NetError`` if the drain task had failed (a switch bug) or the capture
        could not be written; the switch is closed either way.
        """
        if self._state is SwitchState.CLOSED:
            return
        self._state = SwitchState.CLOSED
        task, self._task = self._task, None
        try:
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    me = asyncio.current_task()
                    if me is not None and me.cancelling():
                        raise
        finally:
            for att in list(self._links):
                self._unlink(att)
            self._links.clear()
            self._flood_to = ()
            self._ready.clear()
            self._idle.set()
        await self.stop_capture()
        if self._failure is not None:
            raise NetError(f"switch {self.name} failed") from self._failure

    async def join(self) -> None:
        """Wait until every ingress queue is empty and its frames forwarded.

        A created switch with frames queued is waited on until it is started. Returns at
        once on a closed switch; raises ``NetError`` if the drain task failed.
        """
        while not self._idle.is_set():
            await self._idle.wait()
        if self._failure is not None:
            raise NetError(f"switch {self.name} failed") from self._failure

    # ---- ports ----
    def attach(self, port: Port) -> None:
        """Connect ``port``; pin its fixed MAC, if any.

        ``NetError`` if the switch is closed or the port is attached already;
        ``ConfigError`` if its name or fixed MAC is taken by another port.
        """
        if self._state is SwitchState.CLOSED:
            raise NetError(f"switch {self.name} is closed")
        if port._att is not None:
            raise NetError(f"port {port.name} is already attached to switch {port._att.switch.name}")
        if port.name in self._names:
            raise ConfigError(f"switch {self.name} already has a port named {port.name!r}")
        mac = port.mac
        if mac is not None and mac in self._pinned:
            raise ConfigError(
                f"MAC {mac.hex(':')} of port {port.name} is the fixed MAC of port "
                f"{self._pinned[mac].port.name}"
            )
        att = Attachment(self, port, self._wake)
        if mac is not None:
            stale = self._fdb.pop(mac, None)
            if stale is not None:
                stale.att.learned -= 1
            self._pinned[mac] = att
        self._names[port.name] = att
        self._links[att] = None
        self._flood_to = None
        port._bind(att)
        if self._lan_link is not None and port.link is None:
            port.set_link(self._lan_link)

    def set_link(self, spec: LinkSpec | None) -> None:
        """Impair every port's link as ``spec`` says, the ports attached now and later
        (see ``Port.set_link``; a port attached later with a link of its own keeps it).
        None makes every port's link clean again."""
        self._lan_link = spec
        for att in self._links:
            att.port.set_link(spec)

    def detach(self, port: Port) -> None:
        """Disconnect ``port``: drop its queued frames (counted), its pinned and learned MACs.

        ``NetError`` if it is not attached to this switch.
        """
        att = port._att
        if att is None or att.switch is not self:
            raise NetError(f"port {port.name} is not attached to switch {self.name}")
        self._unlink(att)
        del self._links[att]
        self._flood_to = None

    def _unlink(self, att: Attachment) -> None:
        att.alive = False
        att.ready = False
        port = att.port
        port._unbind()
        if port._link is not None:
            port._link.close()  # frames still on the cable are gone with it
        lost = len(att.queue)
        if lost:
            att.stats.drop_link_down += lost
            self._c.drop_link_down += lost
            att.queue.clear()
        self._names.pop(port.name, None)
        if att.mac is not None:
            self._pinned.pop(att.mac, None)
        arp = self._arp
        for ip in self._arp_owned.pop(att, ()):
            bound = arp.get(ip)
            if bound is not None and bound[1] is att:
                arp[ip] = (bound[0], None)  # remembered: a new owner's announcement is flooded
        if att.learned:
            fdb = self._fdb
            for mac in [m for m, e in fdb.items() if e.att is att]:
                del fdb[mac]
            att.learned = 0

    @property
    def ports(self) -> tuple[Port, ...]:
        """The attached ports, in attach order."""
        return tuple(a.port for a in self._links)

    def port(self, name: str) -> Port | None:
        """The attached port called ``name``, or None."""
        att = self._names.get(name)
        return att.port if att is not None else None

    def lookup(self, mac: bytes | str) -> Port | None:
        """The port frames to ``mac`` would go to now, or None (they would be flooded)."""
        key = as_mac(mac)
        att = self._pinned.get(key)
        if att is not None:
            return att.port
        e = self._fdb.get(key)
        if e is None or e.seen + self.config.ageing_s <= self._clock():
            return None
        return e.att.port

    def addresses(self, port: Port) -> tuple[bytes, ...]:
        """The IPv4 addresses (4 bytes each) ARP has bound to ``port`` (learned from what
        it sent); empty when it is not attached or sent no ARP."""
        att = port._att
        if att is None or att.switch is not self:
            return ()
        return tuple(ip for ip in self._arp_owned.get(att, ()) if self._arp.get(ip, (b"", None))[1] is att)

    def announce(self, port: Port, frame: bytes) -> int:
        """Flood ``frame``, an announcement sent on behalf of ``port`` (a migrated VM's
        gratuitous ARP), to every other port at once, past ARP suppression, and learn its
        binding; the number of ports it went to. ``NetError`` if the port is not attached
        here or the frame is not from its fixed MAC."""
        att = port._att
        if att is None or att.switch is not self:
            raise NetError(f"port {port.name} is not attached to switch {self.name}")
        if (
            att.mac is None
            or not HEADER_LEN <= len(frame) <= MAX_FRAME
            or not frame.startswith(att.mac, SRC_OFFSET)
        ):
            raise NetError(f"an announcement from port {port.name} must come from its fixed MAC")
        if len(frame) >= _ARP_END and frame[12:14] == _ETH_ARP and frame[28:32] != _NO_IP:
            self._arp_learn(att, frame[22:28], frame[28:32])
        n = self._flood(att, frame)
        self._c.frames += 1
        self._c.flooded += 1
        self._c.deliveries += n
        if self._capture is not None:
            self._capture.offer(frame)
        return n

    # ---- capture ----
    def capture(
        self, path: str | os.PathLike[str], *, queue_frames: int = DEFAULT_QUEUE_FRAMES
    ) -> _CaptureStart:
        """Capture every forwarded frame to a pcap file.

        ``await sw.capture(path)`` starts it (returns the ``PcapWriter``; stop it with
        ``await sw.stop_capture()``), or ``async with sw.capture(path) as writer:``
        captures for the block. ``NetError`` if a capture is already running, the
        switch is closed, or the file cannot be opened.
        """
        return _CaptureStart(self, PcapWriter(path, queue_frames=queue_frames))

    async def _start_capture(self, writer: PcapWriter) -> PcapWriter:
        if self._state is SwitchState.CLOSED:
            raise NetError(f"switch {self.name} is closed")
        if self._capture is not None:
            raise NetError(f"switch {self.name} is already capturing to {self._capture.path}")
        await writer.start()
        if self._capture is not None or self._is_closed():
            await writer.stop()
            raise NetError(f"switch {self.name} started another capture or closed meanwhile")
        self._capture = writer
        return writer

    async def stop_capture(self) -> PcapWriter | None:
        """Stop the running capture (flush, close); return it, or None if there was none.

        Raises ``NetError`` if writing the file failed.
        """
        writer, self._capture = self._capture, None
        if writer is not None:
            await writer.stop()
        return writer

    # ---- statistics ----
    def stats(self, per_port: bool = True) -> SwitchStats:
        """A snapshot of all counters: switch-wide, and per port unless ``per_port`` is
        False (then ``port_stats`` is empty: a switch of 10,000 ports need not copy them)."""
        c = self._c
        cap = self._capture
        return SwitchStats(
            state=self._state.value,
            ports=len(self._links),
            frames=c.frames,
            unicast=c.unicast,
            flooded=c.flooded,
            unknown_unicast=c.unknown,
            deliveries=c.deliveries,
            drop_malformed=c.drop_malformed,
            drop_spoofed=c.drop_spoofed,
            drop_loopback=c.drop_loopback,
            drop_link_down=c.drop_link_down,
            port_errors=c.port_errors,
            fdb_pinned=len(self._pinned),
            fdb_learned=len(self._fdb),
            fdb_moves=c.moves,
            fdb_expired=c.expired,
            fdb_evictions=c.evictions,
            capture_written=cap.written if cap is not None else 0,
            capture_dropped=cap.dropped if cap is not None else 0,
            arp_bindings=len(self._arp),
            arp_answered=c.arp_answered,
            arp_announcements=c.arp_announced,
            arp_conflicts=c.arp_conflicts,
            drain_passes=c.passes,
            port_stats={a.port.name: a.stats.snapshot() for a in self._links} if per_port else {},
        )

    # ---- the packet path ----
    def _wake(self, att: Attachment) -> None:
        """Called by ``Port.submit`` when ``att``'s queue goes from empty to non-empty."""
        self._ready.append(att)
        self._idle.clear()
        self._work.set()

    async def _run(self) -> None:
        ready = self._ready
        work = self._work
        clock = self._clock
        per_yield = self.config.frames_per_yield
        try:
            while True:
                if not ready:
                    self._idle.set()
                    work.clear()
                    await work.wait()
                    continue
                now = clock()
                if now >= self._next_expiry:
                    self._expire(now)
                budget = per_yield
                while ready and budget > 0:
                    att = ready.popleft()
                    if not att.alive:
                        continue
                    budget -= self._forward(att, now)
                    if att.alive and att.queue:
                        ready.append(att)
                    else:
                        att.ready = False
                self._c.passes += 1
                # Yield to the loop between rounds: VMs and other tasks run before the next.
                await asyncio.sleep(0)
        except Exception as exc:  # a switch bug: stop forwarding, tell join() and aclose()
            self._failure = exc
            self._idle.set()
            log.exception("switch %s: drain task failed; frames now wait until dropped", self.name)

    def _forward(self, att: Attachment, now: float) -> int:
        """Forward up to ``batch`` frames from ``att``; return how many were taken."""
        q = att.queue
        n = min(len(q), self.config.batch)
        popleft = q.popleft
        pst = att.stats
        fixed = att.mac
        pinned = self._pinned
        fdb = self._fdb
        cap = self._capture
        suppress = self.config.arp_suppress
        unicast = flooded = unknown = flood_deliveries = 0
        taken = n
        for i in range(n):
            try:
                frame = popleft()
            except IndexError:  # the port was detached by a callback during this batch
                taken = i
                break
            if not HEADER_LEN <= len(frame) <= MAX_FRAME:
                pst.drop_malformed += 1
                self._c.drop_malformed += 1
                continue
            if fixed is not None:
                if not frame.startswith(fixed, SRC_OFFSET):
                    pst.drop_spoofed += 1
                    self._c.drop_spoofed += 1
                    continue
            elif not self._learn(att, frame, now):
                continue
            if suppress and frame[12] == 8 and frame[13] == 6 and self._on_arp(att, frame):
                continue  # a request answered or an announcement swallowed (the capture has it)
            if frame[0] & 1:
                out = None
            else:
                dst = frame[:MAC_LEN]
                out = pinned.get(dst)
                if out is None:
                    e = fdb.get(dst)
                    if e is not None:
                        out = e.att
                    else:
                        unknown += 1
            if out is None:
                flooded += 1
                flood_deliveries += self._flood(att, frame)
            elif out is att:
                pst.drop_loopback += 1
                self._c.drop_loopback += 1
                continue
            else:
                unicast += 1
                try:
                    out.deliver(frame)
                except Exception as exc:
                    self._port_failed(out, exc)
            if cap is not None:
                cap.offer(frame)
        c = self._c
        c.frames += taken
        c.unicast += unicast
        c.flooded += flooded
        c.unknown += unknown
        c.deliveries += unicast + flood_deliveries
        return taken

    def _flood(self, att: Attachment, frame: bytes) -> int:
        n = 0
        targets = self._flood_to
        if targets is None:
            targets = self._flood_to = tuple(self._links)
        for other in targets:
            if other is not att:
                n += 1
                try:
                    other.deliver(frame)
                except Exception as exc:
                    self._port_failed(other, exc)
        return n

    def _on_arp(self, att: Attachment, frame: bytes) -> bool:
        """ARP suppression for an ARP frame from ``att``: learn its sender's binding.
        True when it was a broadcast request the switch answered or swallowed (it goes
        no further); False when it is forwarded as usual."""
        if len(frame) < _ARP_END or frame[14:20] != _ARP_ETH_IPV4 or frame[20] != 0:
            return False
        sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
        if sha != frame[SRC_OFFSET:_SRC_END]:
            return False
        learned, moved = self._arp_learn(att, sha, spa) if spa != _NO_IP else (False, False)
        if frame[21] != 1 or not frame[0] & 1:  # not a broadcast request
            return False
        c = self._c
        cap = self._capture
        if tpa == spa:  # an announcement: swallowed once learned, unless the address moved
            if not learned or moved:
                return False
            c.arp_announced += 1
            if cap is not None:
                cap.offer(frame)
            return True
        bound = self._arp.get(tpa)
        if bound is None or tpa == _NO_IP:
            return False
        mac, owner = bound
        if owner is None or owner is att or not owner.alive:
            return False
        if owner.mac is None:  # learned from a port without a fixed MAC: still there?
            e = self._fdb.get(mac)
            if e is None or e.att is not owner:
                return False
        reply = b"".join(
            (sha, mac, _ETH_ARP, _ARP_ETH_IPV4, b"\x00\x02", mac, tpa, sha, spa, bytes(_MIN_FRAME - _ARP_END))
        )
        c.arp_answered += 1
        c.deliveries += 1
        if cap is not None:
            cap.offer(frame)
        try:
            att.deliver(reply)
        except Exception as exc:
            self._port_failed(att, exc)
        if cap is not None:
            cap.offer(reply)
        return True

    def _arp_learn(self, att: Attachment, sha: bytes, spa: bytes) -> tuple[bool, bool]:
        """Bind ``spa`` to ``sha`` on ``att`` unless another live port holds it, the port
        has its share of bindings, or the table is full. Returns (learned, moved: the
        address was last bound to another MAC)."""
        arp = self._arp
        bound = arp.get(spa)
        if bound is None:
            # VMs hold at most arp_per_vm bindings each; the rest of the table (bridged
            # hosts) is bounded by max_macs, as the MAC table is
            room = self.config.max_macs + self.config.arp_per_vm * len(self._pinned)
            if len(arp) >= room:
                self._arp = arp = {ip: b for ip, b in arp.items() if b[1] is not None and b[1].alive}
                if len(arp) >= room:
                    self._c.arp_conflicts += 1  # full of live bindings: not learned
                    return False, False
        prev = bound[1] if bound is not None else None
        if prev is not None and prev.alive and prev is not att:
            self._c.arp_conflicts += 1
            return False, False
        if prev is not att and not self._arp_claim(att, spa):
            return False, False
        arp[spa] = (sha, att)
        return True, bound is not None and bound[0] != sha

    def _arp_claim(self, att: Attachment, spa: bytes) -> bool:
        """Record that ``att`` owns ``spa``; False (counted) when a VM has its share."""
        owned = self._arp_owned.setdefault(att, [])
        if att.mac is not None and len(owned) >= self.config.arp_per_vm:
            owned[:] = [ip for ip in owned if self._arp.get(ip, (b"", None))[1] is att]
            if len(owned) >= self.config.arp_per_vm:
                self._c.arp_conflicts += 1
                return False
        owned.append(spa)
        return True

    def _learn(self, att: Attachment, frame: bytes, now: float) -> bool:
        """Check and learn the source of a frame from a port without a fixed MAC."""
        if frame[SRC_OFFSET] & 1:
            att.stats.drop_malformed += 1
            self._c.drop_malformed += 1
            return False
        src = frame[SRC_OFFSET:_SRC_END]
        fdb = self._fdb
        e = fdb.get(src)
        if e is None:
            if src in self._pinned:
                att.stats.drop_spoofed += 1
                self._c.drop_spoofed += 1
                return False
            if len(fdb) >= self.config.max_macs:
                self._evict()
            fdb[src] = _Learned(att, now)
            att.learned += 1
            if self._next_expiry == math.inf:
                self._next_expiry = now + self.config.ageing_s
        elif e.att is not att:
            e.att.learned -= 1
            e.att = att
            att.learned += 1
            self._c.moves += 1
            del fdb[src]
            fdb[src] = e
            e.seen = now
        elif e.seen != now:
            del fdb[src]
            fdb[src] = e
            e.seen = now
        return True

    def _evict(self) -> None:
        """Make room in a full table: the least recently seen 1/64 of it goes (at least one)."""
        fdb = self._fdb
        victims = list(islice(fdb, max(1, self.config.max_macs // 64)))
        for mac in victims:
            fdb.pop(mac).att.learned -= 1
        self._c.evictions += len(victims)
        self._next_expiry = next(iter(fdb.values())).seen + self.config.ageing_s if fdb else math.inf

    def _expire(self, now: float) -> None:
        """Forget learned addresses not seen for ``ageing_s`` (they are at the front)."""
        fdb = self._fdb
        ageing = self.config.ageing_s
        old: list[bytes] = []
        self._next_expiry = math.inf
        for mac, e in fdb.items():
            expiry = e.seen + ageing
            if expiry > now:
                self._next_expiry = expiry
                break
            old.append(mac)
        for mac in old:
            fdb.pop(mac).att.learned -= 1
        self._c.expired += len(old)

    def _port_failed(self, att: Attachment, exc: Exception) -> None:
        att.errors += 1
        self._c.port_errors += 1
        if att.errors == 1:
            log.error(
                "switch %s: port %s raised in deliver (later errors only counted)",
                self.name,
                att.port.name,
                exc_info=exc,
            )
