"""Helpers for the LAN tests: a recording port, a settable clock, frame builders."""

from __future__ import annotations

from denali.net import Port, build_frame, mac_for_vm
from denali.net.ethernet import BROADCAST


class Recorder(Port):
    """A port that keeps every frame delivered to it (no filter, no bound: tests only)."""

    __slots__ = ("fail", "frames")

    def __init__(self, name: str, *, mac: bytes | None = None, ingress_capacity: int = 256) -> None:
        super().__init__(name, mac=mac, ingress_capacity=ingress_capacity)
        self.frames: list[bytes] = []
        self.fail = False

    def deliver(self, frame: bytes) -> None:
        if self.fail:
            raise RuntimeError(f"{self.name} is broken")
        self.frames.append(frame)
        self.stats.rx_frames += 1
        self.stats.rx_bytes += len(frame)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def mac(n: int) -> bytes:
    """A distinct unicast MAC per small integer."""
    return mac_for_vm(n)


def frame(dst: bytes | int, src: bytes | int, tag: int = 0, size: int = 60) -> bytes:
    """A frame from ``src`` to ``dst`` (ints become ``mac(n)``), ``tag`` in its payload."""
    d = mac(dst) if isinstance(dst, int) else dst
    s = mac(src) if isinstance(src, int) else src
    body = tag.to_bytes(4, "big")
    f = build_frame(d, s, 0x88B5, body, pad=False)
    assert len(f) <= size
    return f + bytes(size - len(f))


def bcast(src: bytes | int, tag: int = 0) -> bytes:
    return frame(BROADCAST, src, tag)


def tag_of(f: bytes) -> int:
    return int.from_bytes(f[14:18], "big")
