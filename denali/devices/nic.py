"""The virtual NIC device: its switch port (``NicPort``) and its hypercalls (NET_INFO/SEND/RECV).

The host side is ``NicPort``, a port of the virtual switch with a fixed MAC and a receive
queue; ``Nic``, the device, has the hypercall handlers: they move frames between guest
memory and that port, checking every guest pointer and length first. A VM without a
NIC gets ``NODEV`` from all three.

Transmit (guest ``NET_SEND``): ``send_nowait`` / ``send_batch_nowait`` check each
frame's length (``NET_MIN_FRAME``..``NET_MTU``, no FCS) and hand it to the switch. They
return a ``TxStatus``; ``TxStatus.result`` is the guest result code for it.

Receive: the switch calls ``deliver``. A non-promiscuous NIC takes only frames for its
own MAC and group (broadcast/multicast) frames; unicast for others, which the switch
floods while the destination is unknown, is dropped and counted in ``drop_filtered`` —
so it raises no interrupt. Taken frames wait in a bounded receive queue (full: dropped,
counted in ``drop_egress_full``) until the guest drains them with ``NET_RECV``
(``receive_nowait``) during its own slice.

Receive interrupt, edge-triggered: ``on_rx()`` is called when the receive queue goes from
empty to non-empty, not for every frame (the kernel ORs ``Irq.NET_RX`` into the VM's
pending mask; a second call before the VM runs would add nothing). So a guest MUST keep
receiving until ``NET_RECV`` answers AGAIN before it waits for the next NET_RX; the
kernel may also re-raise NET_RX itself when ``rx_pending`` is non-zero after a receive.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, Final

from denali import abi
from denali.abi import NET_MAX_BATCH, NET_MIN_FRAME, NET_MTU, Hc, Irq, Result
from denali.devices.base import SLOT_NIC, Device, DeviceHost, State
from denali.errors import ConfigError
from denali.memory import PROT_R, PROT_RW
from denali.net.ethernet import as_mac, mac_for_vm
from denali.net.port import DEFAULT_INGRESS_CAPACITY, Port

if TYPE_CHECKING:
    from denali.memory import GuestMemory

DEFAULT_RX_CAPACITY: Final = 256
"""Frames a NIC's receive queue holds by default (reported to the guest by NET_INFO)."""

RxCallback = Callable[[], None]
TxFilter = Callable[[bytes], "bytes | int | None"]
"""A monitor's filter on frames sent: the frame to send (changed or not), None to drop it
(the guest sees it sent), or a ``Result`` code to refuse it (NET_SEND stops there)."""
RxFilter = Callable[[bytes], "bytes | None"]
"""A monitor's filter on frames received: the frame to give the guest, or None to drop it."""


@dataclass(frozen=True)
class NicConfig:
    """Configuration of a virtual NIC; ``ConfigError`` on out-of-range values."""

    rx_capacity: int = DEFAULT_RX_CAPACITY
    """Bound of the receive queue, in frames."""
    tx_capacity: int = DEFAULT_INGRESS_CAPACITY
    """Bound of the transmit queue (the port's ingress queue in the switch), in frames."""
    promiscuous: bool = False
    """Take every frame delivered, not only those for this MAC and group frames."""

    def __post_init__(self) -> None:
        if self.rx_capacity < 1:
            raise ConfigError(f"rx_capacity must be at least 1, not {self.rx_capacity}")
        if self.tx_capacity < 1:
            raise ConfigError(f"tx_capacity must be at least 1, not {self.tx_capacity}")


class TxStatus(Enum):
    """Outcome of handing a frame to the NIC; ``result`` is the guest's result code."""

    OK = "ok"
    """Queued in the switch."""
    INVALID = "invalid"
    """Length outside 60..1514: refused and counted as malformed (guest: INVAL)."""
    FULL = "full"
    """Transmit queue full: dropped and counted (guest: FULL)."""
    NO_LINK = "no_link"
    """NIC not attached to a switch: dropped and counted, like a NIC with no cable (guest: OK)."""

    @property
    def result(self) -> Result:
        """The ``abi.Result`` the kernel returns to the guest for this outcome."""
        return _RESULTS[self]


_RESULTS: Final = {
    TxStatus.OK: Result.OK,
    TxStatus.INVALID: Result.INVAL,
    TxStatus.FULL: Result.FULL,
    TxStatus.NO_LINK: Result.OK,
}


class NicPort(Port):
    """A VM's NIC: fixed MAC, bounded receive queue, edge-triggered ``on_rx``.

    ``on_rx`` may be set or replaced at any time (attribute). Use ``for_vm`` for the
    standard name (``vm<ID>``) and MAC (``mac_for_vm``).
    """

    __slots__ = ("_own", "_promiscuous", "_rx", "_rx_capacity", "on_rx")

    def __init__(
        self, name: str, mac: bytes | str, *, config: NicConfig | None = None, on_rx: RxCallback | None = None
    ) -> None:
        cfg = config if config is not None else NicConfig()
        own = as_mac(mac)
        super().__init__(name, mac=own, ingress_capacity=cfg.tx_capacity)
        self._own = own
        self._rx: deque[bytes] = deque()
        self._rx_capacity = cfg.rx_capacity
        self._promiscuous = cfg.promiscuous
        self.on_rx: RxCallback | None = on_rx

    @classmethod
    def for_vm(
        cls, vm_id: int, *, config: NicConfig | None = None, on_rx: RxCallback | None = None
    ) -> NicPort:
        """The NIC of VM ``vm_id``: named ``vm<vm_id>``, MAC ``mac_for_vm(vm_id)``."""
        return cls(f"vm{vm_id}", mac_for_vm(vm_id), config=config, on_rx=on_rx)

    @property
    def fixed_mac(self) -> bytes:
        """This NIC's MAC (never None, unlike ``Port.mac`` in general)."""
        return self._own

    @property
    def rx_capacity(self) -> int:
        return self._rx_capacity

    @property
    def rx_pending(self) -> int:
        """Frames waiting in the receive queue."""
        return len(self._rx)

    # ---- switch -> NIC ----
    def deliver(self, frame: bytes) -> None:
        """Queue a frame for the guest (see the module docstring for filtering and ``on_rx``)."""
        st = self.stats
        if len(frame) > NET_MTU:  # more than a receive slot holds (the switch allows a VLAN tag)
            st.drop_malformed += 1
            return
        if not (frame[0] & 1 or self._promiscuous or frame.startswith(self._own)):
            st.drop_filtered += 1
            return
        q = self._rx
        n = len(q)
        if n >= self._rx_capacity:
            st.drop_egress_full += 1
            return
        q.append(frame)
        st.rx_frames += 1
        st.rx_bytes += len(frame)
        if n == 0:
            cb = self.on_rx
            if cb is not None:
                cb()

    # ---- guest side ----
    def receive_nowait(self, max_frames: int = NET_MAX_BATCH) -> list[bytes]:
        """Take up to ``max_frames`` frames, oldest first; ``[]`` when none wait (or max < 1)."""
        q = self._rx
        n = len(q)
        if not n or max_frames < 1:
            return []
        if n <= max_frames:
            out = list(q)
            q.clear()
            return out
        popleft = q.popleft
        return [popleft() for _ in range(max_frames)]

    def pending_frames(self) -> tuple[bytes, ...]:
        """The frames waiting in the receive queue, oldest first (left in place)."""
        return tuple(self._rx)

    def refill(self, frames: Sequence[bytes]) -> None:
        """Put saved frames back into an empty receive queue (a restored NIC), up to its
        capacity; raises the receive callback if any were put back."""
        for f in frames[: self._rx_capacity - len(self._rx)]:
            self._rx.append(bytes(f))
        if self._rx and self.on_rx is not None:
            self.on_rx()

    def clear_rx(self) -> int:
        """Drop every waiting frame (e.g. the VM ended); counted in ``drop_link_down``."""
        n = len(self._rx)
        self._rx.clear()
        self.stats.drop_link_down += n
        return n

    def tx_room(self) -> int:
        """Frames ``submit_many`` would queue right now (0 while not attached, or while a
        link model takes the frames instead of the queue)."""
        att, link = self._att, self._link
        if att is None or (link is not None and link.from_port is not None):
            return 0
        return max(0, att.capacity - len(att.queue))

    def send_nowait(self, frame: bytes) -> TxStatus:
        """Check one frame and hand it to the switch; never blocks, never raises."""
        size = len(frame)
        if size < NET_MIN_FRAME or size > NET_MTU:
            self.stats.drop_malformed += 1
            return TxStatus.INVALID
        if self._att is None:
            self.stats.drop_link_down += 1
            return TxStatus.NO_LINK
        return TxStatus.OK if self.submit(frame) else TxStatus.FULL

    def send_batch_nowait(self, frames: Sequence[bytes]) -> tuple[int, TxStatus]:
        """Send frames in order; return (frames consumed, status that ended the batch).

        Frames are consumed up to the first invalid one (INVALID) or until the transmit
        queue is full (FULL: every valid frame after that point is dropped and
        counted); status OK when all were queued, NO_LINK when the NIC is not attached
        (the valid frames are consumed and counted as dropped). Frames after an invalid
        one are not looked at and not counted.
        """
        valid = 0
        for f in frames:
            size = len(f)
            if size < NET_MIN_FRAME or size > NET_MTU:
                break
            valid += 1
        st = self.stats
        if self._att is None:
            st.drop_link_down += valid
            status = TxStatus.NO_LINK
            accepted = valid
        else:
            part = frames if valid == len(frames) else list(islice(frames, valid))
            accepted = self.submit_many(part) if valid else 0
            status = TxStatus.OK if accepted == valid else TxStatus.FULL
        if valid < len(frames) and status is not TxStatus.FULL:
            st.drop_malformed += 1
            return accepted, TxStatus.INVALID
        return accepted, status


# ---- the device ----
_INFO: Final = abi.HYPERCALL_BY_NR[Hc.NET_INFO].args.offsets()
_SEND: Final = abi.HYPERCALL_BY_NR[Hc.NET_SEND].args.offsets()
_RECV: Final = abi.HYPERCALL_BY_NR[Hc.NET_RECV].args.offsets()
_U32: Final = struct.Struct("<I")
_PAIR: Final = struct.Struct("<II")
_QUAD: Final = struct.Struct("<IIII")
_MTU: Final = abi.NET_MTU
_MIN: Final = abi.NET_MIN_FRAME
_BATCH: Final = abi.NET_MAX_BATCH


class Nic(Device):
    """A VM's NIC device: the NET_* hypercalls over its switch port ``port``.

    The port's receive callback raises ``Irq.NET_RX`` on the VM. State: the MAC and the
    frames waiting in the receive queue (the port's switch attachment belongs to the
    kernel that restores it).
    """

    SLOT: ClassVar[int] = SLOT_NIC
    HYPERCALLS: ClassVar = {Hc.NET_INFO: "hc_info", Hc.NET_SEND: "hc_send", Hc.NET_RECV: "hc_recv"}
    __slots__ = ("above", "port", "rx_filter", "tx_filter")

    def __init__(self, port: NicPort, above: Nic | None = None) -> None:
        self.port = port
        self.tx_filter: TxFilter | None = None
        """Set by the monitor layer while a monitor interposes on frames sent."""
        self.rx_filter: RxFilter | None = None
        """Set by the monitor layer while a monitor interposes on frames received."""
        self.above = above
        """The NIC this one was passed down from (a child VM's, CHILD_F_NIC), or None: the
        frames this NIC sends meet that NIC's monitors after its own, and the frames it
        receives meet them before its own, so a child never escapes the monitors (a
        policy's rate limits, a tracer) of any ancestor."""

    def send_filter(self) -> TxFilter | None:
        """What a frame this NIC sends passes through: its monitors', then those of every
        NIC above it (None: nothing interposes)."""
        own = self.tx_filter
        up = self.above.send_filter() if self.above is not None else None
        if up is None or own is None:
            return own if up is None else up

        def both(frame: bytes) -> bytes | int | None:
            out = own(frame)
            return out if out is None or isinstance(out, int) else up(out)

        return both

    def receive_filter(self) -> RxFilter | None:
        """What a frame this NIC receives passes through: the monitors of every NIC above
        it, then its own (None: nothing interposes)."""
        own = self.rx_filter
        up = self.above.receive_filter() if self.above is not None else None
        if up is None or own is None:
            return own if up is None else up

        def both(frame: bytes) -> bytes | None:
            out = up(frame)
            return None if out is None else own(out)

        return both

    def attach(self, host: DeviceHost) -> None:
        super().attach(host)
        self.port.on_rx = self._on_rx

    def native_sender(self) -> tuple[Callable[[list[bytes]], None], Callable[[], int]] | None:
        """What the CPU's native NET_SEND (``VCpu.set_native_send``) needs: where the frames
        it took go and how many the port still takes; None while a monitor filters the
        frames sent here or above (they must see each one) or for a child's NIC."""
        if self.tx_filter is not None or self.above is not None:
            return None
        return self.send_native, self.port.tx_room

    def send_native(self, frames: list[bytes]) -> None:
        """The frames the CPU's hook took for NET_SEND, in the guest's order: checked there
        (lengths, pointers) and within the port's room, so all are queued."""
        self.port.send_batch_nowait(frames)

    def _on_rx(self) -> None:
        self._host.raise_irq(Irq.NET_RX)

    def hc_info(self, mem: GuestMemory, arg: int) -> int:
        buf = mem.buf
        nic = self.port
        buf[arg + _INFO["mac"] : arg + _INFO["mac"] + 6] = nic.fixed_mac
        _U32.pack_into(buf, arg + _INFO["mtu"], _MTU)
        _U32.pack_into(buf, arg + _INFO["rx_queue"], nic.rx_capacity)
        return Result.OK

    def hc_send(self, mem: GuestMemory, arg: int) -> int:
        filt = self.tx_filter if self.above is None else self.send_filter()
        if filt is not None:
            return self._send_filtered(mem, arg, filt)
        buf = mem.buf
        frames_at, count = _PAIR.unpack_from(buf, arg + _SEND["frames"])
        _U32.pack_into(buf, arg + _SEND["sent"], 0)
        if count > _BATCH:
            return Result.INVAL
        if not mem.check(frames_at, count * 8, PROT_R):
            return Result.FAULT
        frames = []
        stop = Result.OK
        for i in range(count):
            addr, length = _PAIR.unpack_from(buf, frames_at + 8 * i)
            if length < _MIN or length > _MTU:
                stop = Result.INVAL
                break
            if not mem.check(addr, length, PROT_R):
                stop = Result.FAULT
                break
            frames.append(buf[addr : addr + length])
        accepted, status = self.port.send_batch_nowait(frames) if frames else (0, None)
        _U32.pack_into(buf, arg + _SEND["sent"], accepted)
        if status is not None and status.result != Result.OK:
            return int(status.result)
        return stop

    def _send_filtered(self, mem: GuestMemory, arg: int, filt: TxFilter) -> int:
        """NET_SEND with a monitor's filter on each frame (frame by frame: a refusal or a
        full queue stops the batch there; 'sent' counts frames consumed, dropped ones
        included)."""
        buf = mem.buf
        frames_at, count = _PAIR.unpack_from(buf, arg + _SEND["frames"])
        _U32.pack_into(buf, arg + _SEND["sent"], 0)
        if count > _BATCH:
            return Result.INVAL
        if not mem.check(frames_at, count * 8, PROT_R):
            return Result.FAULT
        sent = 0
        res = int(Result.OK)
        for i in range(count):
            addr, length = _PAIR.unpack_from(buf, frames_at + 8 * i)
            if length < _MIN or length > _MTU:
                res = Result.INVAL
                break
            if not mem.check(addr, length, PROT_R):
                res = Result.FAULT
                break
            out = filt(bytes(buf[addr : addr + length]))
            if isinstance(out, int):
                res = out
                break
            if out is not None:
                status = self.port.send_nowait(out)
                if status is TxStatus.INVALID or status is TxStatus.FULL:
                    res = status.result
                    break
            sent += 1
        _U32.pack_into(buf, arg + _SEND["sent"], sent)
        return res

    def hc_recv(self, mem: GuestMemory, arg: int) -> int:
        buf = mem.buf
        bufs, slot, count, lens = _QUAD.unpack_from(buf, arg + _RECV["bufs"])
        _U32.pack_into(buf, arg + _RECV["received"], 0)
        if slot < _MTU or count < 1 or count > _BATCH or slot > 1 << 20:
            return Result.INVAL
        if not mem.check(bufs, slot * count, PROT_RW) or not mem.check(lens, 4 * count, PROT_RW):
            return Result.FAULT
        nic = self.port
        frames = nic.receive_nowait(count)
        filt = self.rx_filter if self.above is None else self.receive_filter()
        if filt is not None and frames:  # a monitor sees each frame (and may change or drop it)
            frames = [f for f in map(filt, frames) if f is not None and len(f) <= slot]
            if not frames and nic.rx_pending:
                self._host.raise_irq(Irq.NET_RX)
        if not frames:
            return Result.AGAIN
        for i, frame in enumerate(frames):
            at = bufs + i * slot
            buf[at : at + len(frame)] = frame
            _U32.pack_into(buf, lens + 4 * i, len(frame))
        _U32.pack_into(buf, arg + _RECV["received"], len(frames))
        if nic.rx_pending:
            self._host.raise_irq(Irq.NET_RX)  # more wait: keep the (edge-triggered) bit set
        return Result.OK

    def save(self) -> State:
        return {"mac": self.port.fixed_mac, "rx": list(self.port.pending_frames())}

    def restore(self, state: State) -> None:
        self.port.refill(state.get("rx", ()))

    @classmethod
    def check_state(cls, state: Any) -> None:
        super().check_state(state)
        rx = state.get("rx", [])
        if not isinstance(rx, list) or not all(isinstance(f, bytes) and len(f) <= _MTU for f in rx):
            raise ValueError("the NIC's queued frames are not frames")

    def close_now(self) -> bool:
        self.port.clear_rx()
        self.port.on_rx = None
        return True

    async def aclose(self) -> None:
        self.close_now()
