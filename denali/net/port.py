"""The port interface: what every endpoint of the virtual switch (VM NIC, TAP, VXLAN) implements.

A port has two directions, named from the port's side:

- **tx** (port -> switch): the port calls ``submit(frame)`` (or ``submit_many``). The
  frame goes into the port's bounded *ingress queue* in the switch and the call returns
  at once: ``True`` when queued, ``False`` when the queue is full or the port is not
  attached (the frame is dropped and counted). The switch drains ingress queues
  round-robin from its own task; ``submit`` never forwards inline.
- **rx** (switch -> port): the switch calls ``deliver(frame)``, which the port
  implements. It must never block, never raise, and count whatever it cannot take.

A port may declare a fixed source MAC (``mac``): the switch then pins that address to the
port (frames to it go straight there, it never ages) and drops, counting them as
spoofed, frames from this port with any other source address, and frames from any other
port carrying this one as source. A port without a fixed MAC (TAP, VXLAN) may carry many
source addresses; the switch learns them.

Every method here runs on the event loop's thread; none is thread-safe. Frames are
``bytes`` (immutable; the switch and ports keep references, never copies); ``submit``
copies any other buffer (bytearray, memoryview) into ``bytes`` once, so a sender can
never change a frame after handing it over.

Attachment: ``Switch.attach(port)`` / ``Switch.detach(port)``. A port belongs to at most
one switch at a time; ``port.switch`` says which. Detaching discards what still waits in
the ingress queue (counted in ``drop_link_down``).

Impairment: ``set_link(LinkSpec)`` puts a seeded netem-like link (``denali.net.impair``)
between the port and the switch: frames the port submits pass through it before they
reach the ingress queue, and frames the switch delivers pass through it before
``deliver``. Frames the link drops are counted in ``drop_impaired``. ``set_link(None)``
removes it (frames it still holds are discarded).
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from itertools import islice
from typing import Final, Protocol

from denali.errors import ConfigError
from denali.net.ethernet import as_mac, is_multicast
from denali.net.impair import LinkSpec, PortLink

DEFAULT_INGRESS_CAPACITY: Final = 256
"""Frames a port may have waiting in the switch before ``submit`` drops."""


@dataclass(slots=True)
class PortStats:
    """Counters of one port; mutated in place on the packet path (copy with ``snapshot``).

    tx = frames the port handed to the switch and the switch queued; rx = frames the
    switch handed to the port and the port accepted. Every frame that is lost is counted
    in exactly one ``drop_*`` field, attributed to the port where it was lost.
    """

    tx_frames: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    drop_ingress_full: int = 0
    """``submit`` refused: the port's ingress queue in the switch was full."""
    drop_egress_full: int = 0
    """``deliver`` refused: the port's own queue (e.g. the NIC receive queue) was full."""
    drop_spoofed: int = 0
    """Source MAC not allowed on this port (not its fixed MAC, or another port's)."""
    drop_malformed: int = 0
    """Shorter than an Ethernet header, multicast source, or (NIC) length not 60..1514."""
    drop_loopback: int = 0
    """Destination is on the ingress port itself; a switch never sends a frame back."""
    drop_filtered: int = 0
    """``deliver``: unicast for another address reached a non-promiscuous NIC (flooding)."""
    drop_link_down: int = 0
    """Sent while not attached, or still queued when the port was detached or the switch closed."""
    drop_impaired: int = 0
    """Dropped by the port's link impairment (loss, its queue limit, a drop predicate), either direction."""

    @property
    def drops(self) -> int:
        """All drops, whatever the cause."""
        return (
            self.drop_ingress_full
            + self.drop_egress_full
            + self.drop_spoofed
            + self.drop_malformed
            + self.drop_loopback
            + self.drop_filtered
            + self.drop_link_down
            + self.drop_impaired
        )

    def snapshot(self) -> PortStats:
        """An independent copy (the live object keeps changing)."""
        return PortStats(*(getattr(self, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (``drops`` included)."""
        out = {f.name: int(getattr(self, f.name)) for f in fields(self)}
        out["drops"] = self.drops
        return out


class Hub(Protocol):
    """What a port knows of the switch it is attached to (``denali.net.switch.Switch``)."""

    @property
    def name(self) -> str: ...

    def detach(self, port: Port) -> None: ...


class Attachment:
    """A port's membership in one switch: its ingress queue and forwarding state.

    Created by the switch (``Switch.attach`` -> ``Port._bind``), killed (``alive =
    False``) by ``Switch.detach`` (-> ``Port._unbind``); a port re-attached gets a new
    one. ``wake(att)`` tells the switch that a queue went from empty to non-empty.
    Internal to ``denali.net``: ports use it only through ``Port.submit``.
    """

    __slots__ = (
        "alive",
        "capacity",
        "deliver",
        "errors",
        "learned",
        "mac",
        "port",
        "queue",
        "ready",
        "stats",
        "switch",
        "wake",
    )

    def __init__(self, switch: Hub, port: Port, wake: Callable[[Attachment], None]) -> None:
        self.switch = switch
        self.wake = wake
        self.port = port
        self.queue: deque[bytes] = deque()
        self.capacity = port.ingress_capacity
        self.mac = port.mac
        self.deliver: Callable[[bytes], object] = port._egress()
        self.stats = port.stats
        self.ready = False
        """INVARIANT: True while this attachment is in the switch's ready queue or being drained."""
        self.alive = True
        self.learned = 0
        """Learned (non-pinned) MACs in the switch table that point to this port."""
        self.errors = 0


class Port(abc.ABC):
    """Base class of every switch port; subclasses implement ``deliver``.

    ``name`` must be unique within a switch (it keys the statistics). ``mac``, when
    given, is the port's fixed source address (unicast; ``ConfigError`` otherwise).
    ``ingress_capacity`` bounds the frames waiting in the switch for this port.
    """

    __slots__ = ("_att", "_ingress_capacity", "_link", "_mac", "_name", "stats")

    def __init__(
        self, name: str, *, mac: bytes | str | None = None, ingress_capacity: int = DEFAULT_INGRESS_CAPACITY
    ) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError("a port needs a non-empty name")
        if ingress_capacity < 1:
            raise ConfigError(f"ingress_capacity must be at least 1, not {ingress_capacity}")
        fixed = None if mac is None else as_mac(mac)
        if fixed is not None and is_multicast(fixed):
            raise ConfigError(f"a port's fixed MAC must be unicast, not {fixed.hex(':')}")
        self._name = name
        self._mac = fixed
        self._ingress_capacity = ingress_capacity
        self._att: Attachment | None = None
        self._link: PortLink | None = None
        self.stats = PortStats()

    def __repr__(self) -> str:
        mac = self._mac.hex(":") if self._mac is not None else "any"
        return f"<{type(self).__name__} {self._name} mac={mac} attached={self._att is not None}>"

    @property
    def name(self) -> str:
        """The port's name, unique within its switch."""
        return self._name

    @property
    def mac(self) -> bytes | None:
        """The fixed source MAC, or None when the port may carry any source address."""
        return self._mac

    @property
    def ingress_capacity(self) -> int:
        """Bound of the port's ingress queue in the switch, in frames."""
        return self._ingress_capacity

    def _bind(self, att: Attachment) -> None:
        """Called by the switch as it attaches this port."""
        self._att = att

    def _unbind(self) -> None:
        """Called by the switch as it detaches this port."""
        self._att = None

    @property
    def switch(self) -> Hub | None:
        """The switch this port is attached to, or None."""
        att = self._att
        return att.switch if att is not None else None

    @property
    def ingress_pending(self) -> int:
        """Frames this port submitted that the switch has not forwarded yet."""
        att = self._att
        return len(att.queue) if att is not None else 0

    @abc.abstractmethod
    def deliver(self, frame: bytes) -> None:
        """Take a frame from the switch (egress). MUST NOT block or raise.

        Count the frame in ``stats.rx_*`` when taken, or in one ``stats.drop_*`` field
        when it cannot be taken (``drop_egress_full`` for a full queue).
        """

    # ---- link impairment ----
    @property
    def link(self) -> PortLink | None:
        """The impaired link between this port and the switch, or None (a clean cable)."""
        return self._link

    def set_link(
        self,
        spec: LinkSpec | None,
        *,
        drop_in: Callable[[bytes], bool] | None = None,
        drop_out: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Impair this port's link as ``spec`` says (None: a clean cable again).

        ``drop_in`` / ``drop_out``: frames to the port / from the port for which the
        predicate returns True are lost (before ``spec`` applies; a clean spec is
        assumed when only predicates are given).
        """
        old = self._link
        if old is not None:
            old.close()
        self._link = None
        if spec is None and (drop_in is not None or drop_out is not None):
            spec = LinkSpec(direction="in" if drop_out is None else "out" if drop_in is None else "both")
        if spec is not None:
            self._link = PortLink(
                spec, self._name, self.deliver, self._enqueue, drop_in=drop_in, drop_out=drop_out
            )
        att = self._att
        if att is not None:
            att.deliver = self._egress()

    def _egress(self) -> Callable[[bytes], object]:
        """What the switch calls to hand this port a frame: the link, or ``deliver``."""
        link = self._link
        if link is not None and link.to_port is not None:
            return self._impaired_deliver
        return self.deliver

    def _impaired_deliver(self, frame: bytes) -> None:
        link = self._link
        if link is None or link.to_port is None:
            self.deliver(frame)
        elif not link.to_port.push(frame):
            self.stats.drop_impaired += 1

    def submit(self, frame: bytes) -> bool:
        """Hand a frame to the switch without blocking.

        True: queued in this port's ingress queue, or taken by the port's impaired link
        (which may lose it, as a real cable does: counted in ``drop_impaired``, invisible
        to the sender). False: dropped and counted (``drop_ingress_full`` when the queue
        is full, ``drop_link_down`` when the port is not attached, e.g. after the switch
        closed). The switch checks the frame (length, source MAC) when it forwards it,
        not here.
        """
        link = self._link
        if link is not None and link.from_port is not None:
            if self._att is None:
                self.stats.drop_link_down += 1
                return False
            if frame.__class__ is not bytes:
                frame = bytes(frame)
            if not link.from_port.push(frame):
                self.stats.drop_impaired += 1
            return True
        return self._enqueue(frame)

    def _enqueue(self, frame: bytes) -> bool:
        att = self._att
        st = self.stats
        if att is None:
            st.drop_link_down += 1
            return False
        q = att.queue
        if len(q) >= att.capacity:
            st.drop_ingress_full += 1
            return False
        if frame.__class__ is not bytes:  # a bytearray/memoryview: freeze a copy (keys, sharing)
            frame = bytes(frame)
        q.append(frame)
        st.tx_frames += 1
        st.tx_bytes += len(frame)
        if not att.ready:
            att.ready = True
            att.wake(att)
        return True

    def submit_many(self, frames: Sequence[bytes]) -> int:
        """Hand several frames to the switch without blocking; return how many were queued.

        Queues the longest prefix of ``frames`` that fits; every frame after it is
        dropped and counted as ``submit`` would count it.
        """
        total = len(frames)
        link = self._link
        if link is not None and link.from_port is not None:
            taken = 0
            for f in frames:
                taken += self.submit(f)
            return taken
        att = self._att
        st = self.stats
        if att is None:
            st.drop_link_down += total
            return 0
        for f in frames:
            if f.__class__ is not bytes:
                frames = [bytes(x) for x in frames]
                break
        q = att.queue
        take = min(total, att.capacity - len(q))
        if take <= 0:
            st.drop_ingress_full += total
            return 0
        if take == total:
            q.extend(frames)
            st.tx_bytes += sum(map(len, frames))
        else:
            part = list(islice(frames, take))
            q.extend(part)
            st.tx_bytes += sum(map(len, part))
            st.drop_ingress_full += total - take
        st.tx_frames += take
        if not att.ready:
            att.ready = True
            att.wake(att)
        return take
