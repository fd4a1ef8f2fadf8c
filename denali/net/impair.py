"""Link impairment for switch ports: seeded, netem-like loss, delay, jitter, reorder,
duplication, corruption and rate limiting.

A ``LinkSpec`` says what a link does to frames; ``Port.set_link(spec)`` (or
``Switch.set_link`` for every port of a LAN) puts it on a port's cable. A port's link
impairs both directions independently by default (frames the port sends to the switch,
and frames the switch delivers to the port), each with its own random stream and
queue; ``dir=in`` impairs only frames going *into* the port's device (switch -> port,
e.g. to the VM or out of the TAP device to Linux), ``dir=out`` only frames coming *out*
of it (port -> switch).

Per frame, in this order (like Linux netem):

1. ``loss``: dropped with this probability;
2. ``corrupt``: one random bit past the Ethernet header is flipped;
3. ``duplicate``: a second copy goes through the same queue;
4. ``rate``: the frame is serialized behind the frames queued before it at this many
   bits per second (``limit`` frames at most wait; beyond that it is dropped);
5. ``delay`` +- ``jitter`` (uniform): it leaves that long after serialization. With
   jitter, frames may overtake each other, as in netem;
6. ``reorder``: with this probability a frame skips the delay (it leaves at once,
   ahead of delayed frames): this needs a delay to have an effect.

A link can also drop exactly the frames a program chooses (``drop_in``/``drop_out``
predicates of ``Port.set_link``; counted as ``chosen``), for tests that lose one given
segment. Every random decision comes from a ``random.Random`` seeded from ``seed``, the port's name and
the direction, so a run with the same seed and the same traffic impairs the same
frames. Delayed frames wait in a heap ordered by departure time, released by one event
loop timer; an impairment without delay or rate handles a frame inline.

Text form (``LinkSpec.parse``, the CLI's ``--link``): comma-separated ``key=value``
with ``loss``, ``duplicate``, ``corrupt``, ``reorder`` as percentages (``5%``) or
fractions (``0.05``); ``delay`` and ``jitter`` as durations (``20ms``, ``1.5s``,
``200us``; a bare number is milliseconds); ``rate`` in bits/s with an optional
``k``/``m``/``g`` prefix and ``bit``/``bps`` suffix (``10mbit``); ``limit`` in frames;
``seed`` an integer; ``dir`` ``both``/``in``/``out``. Example:
``loss=5%,delay=20ms,jitter=2ms,seed=7``.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Final

from denali.errors import ConfigError

Deliver = Callable[[bytes], object]

DEFAULT_LIMIT: Final = 1000
"""Frames one direction of a link holds in flight (netem's default limit)."""

_ETH_HLEN: Final = 14
_DIRECTIONS: Final = ("both", "in", "out")


@dataclass(frozen=True)
class LinkSpec:
    """What a link does to frames; see the module docstring. ``ConfigError`` on bad values."""

    loss: float = 0.0
    """Probability that a frame is lost, 0..1."""
    delay_s: float = 0.0
    """Fixed one-way delay, seconds."""
    jitter_s: float = 0.0
    """Uniform jitter added to the delay, +- seconds (the result is never negative)."""
    reorder: float = 0.0
    """Probability that a frame skips the delay and leaves at once, 0..1."""
    duplicate: float = 0.0
    """Probability that a frame is sent twice, 0..1."""
    corrupt: float = 0.0
    """Probability that one bit of a frame (past the Ethernet header) is flipped, 0..1."""
    rate_bps: float = 0.0
    """Serialization rate in bits per second; 0 = unlimited."""
    limit: int = DEFAULT_LIMIT
    """Frames waiting (serialization and delay) per direction; more are dropped."""
    seed: int = 0
    """Seed of the random streams."""
    direction: str = "both"
    """``both``, ``in`` (switch -> port) or ``out`` (port -> switch)."""

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate", "corrupt"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ConfigError(f"link {name} must be between 0 and 100%, not {v * 100:g}%")
        for name in ("delay_s", "jitter_s", "rate_bps"):
            v = getattr(self, name)
            if not (v >= 0.0 and math.isfinite(v)):
                raise ConfigError(f"link {name.split('_')[0]} must be a finite non-negative number, not {v}")
        if self.limit < 1:
            raise ConfigError(f"link limit must be at least 1 frame, not {self.limit}")
        if self.direction not in _DIRECTIONS:
            raise ConfigError(f"link dir must be one of {', '.join(_DIRECTIONS)}, not {self.direction!r}")

    @property
    def timed(self) -> bool:
        """True when frames wait (delay or rate); False when every frame is handled inline."""
        return self.delay_s > 0 or self.jitter_s > 0 or self.rate_bps > 0

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """``loss=5%,delay=20ms,...`` (see the module docstring); ``ConfigError`` says what is wrong."""
        values: dict[str, object] = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, raw = item.partition("=")
            key = key.strip().lower()
            raw = raw.strip()
            if not eq or not raw:
                raise ConfigError(f"link option {item!r}: expected key=value")
            if key in ("loss", "reorder", "duplicate", "corrupt"):
                values[key] = _fraction(key, raw)
            elif key in ("delay", "jitter"):
                values[f"{key}_s"] = _duration(key, raw)
            elif key == "rate":
                values["rate_bps"] = _rate(raw)
            elif key in ("limit", "seed"):
                try:
                    values[key] = int(raw, 0)
                except ValueError:
                    raise ConfigError(f"link {key} must be an integer, not {raw!r}") from None
            elif key == "dir":
                values["direction"] = raw.lower()
            else:
                raise ConfigError(
                    f"unknown link option {key!r} (expected loss, delay, jitter, reorder, "
                    "duplicate, corrupt, rate, limit, seed, dir)"
                )
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v == f.default:
                continue
            if f.name in ("loss", "reorder", "duplicate", "corrupt"):
                parts.append(f"{f.name}={v * 100:g}%")
            elif f.name in ("delay_s", "jitter_s"):
                parts.append(f"{f.name[:-2]}={v * 1000:g}ms")
            elif f.name == "rate_bps":
                parts.append(f"rate={v:g}bit")
            elif f.name == "direction":
                parts.append(f"dir={v}")
            else:
                parts.append(f"{f.name}={v}")
        return ",".join(parts) or "clean"


_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def _fraction(key: str, raw: str) -> float:
    m = re.fullmatch(_NUM + r"\s*(%?)", raw)
    if not m:
        raise ConfigError(f"link {key} must be a percentage like 5% or a fraction like 0.05, not {raw!r}")
    v = float(m.group(1))
    return v / 100.0 if m.group(2) else v


def _duration(key: str, raw: str) -> float:
    m = re.fullmatch(_NUM + r"\s*(us|ms|s)?", raw.lower())
    if not m:
        raise ConfigError(f"link {key} must be a duration like 20ms, 1.5s or 200us, not {raw!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}[m.group(2)]
    return float(m.group(1)) * scale


def _rate(raw: str) -> float:
    m = re.fullmatch(_NUM + r"\s*([kmg]?)(bit|bps|b)?(/s)?", raw.lower())
    if not m:
        raise ConfigError(f"link rate must be bits per second like 10mbit or 500kbit, not {raw!r}")
    return float(m.group(1)) * {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


@dataclass(slots=True)
class LinkStats:
    """Counters of one direction of an impaired link."""

    frames: int = 0
    """Frames offered to the link."""
    chosen: int = 0
    """Dropped by the link's drop predicate."""
    lost: int = 0
    """Dropped by ``loss``."""
    overlimit: int = 0
    """Dropped because ``limit`` frames were already waiting."""
    corrupted: int = 0
    duplicated: int = 0
    reordered: int = 0
    delivered: int = 0
    """Frames (copies included) handed on."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


class Impairment:
    """One direction of an impaired link: frames in through ``push``, out through ``out``.

    ``out`` must never raise (a port's ``deliver`` or its switch-side enqueue). Timed
    impairments need a running event loop when the first frame arrives. ``close``
    cancels the timer and drops waiting frames (they count as neither lost nor delivered).
    """

    __slots__ = ("_busy_until", "_heap", "_loop", "_out", "_rng", "_seq", "_timer", "drop", "spec", "stats")

    def __init__(
        self, spec: LinkSpec, out: Deliver, stream: str, drop: Callable[[bytes], bool] | None = None
    ) -> None:
        self.spec = spec
        self.drop = drop
        """Frames for which this returns True are dropped (before any random decision)."""
        self._out = out
        self._rng = random.Random(f"{spec.seed}:{stream}")
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy_until = 0.0
        self.stats = LinkStats()

    @property
    def waiting(self) -> int:
        """Frames held for their departure time."""
        return len(self._heap)

    def push(self, frame: bytes) -> bool:
        """Impair one frame; True unless it was dropped at once (loss or limit)."""
        spec = self.spec
        st = self.stats
        st.frames += 1
        if self.drop is not None and self.drop(frame):
            st.chosen += 1
            return False
        rnd = self._rng.random
        if spec.loss and rnd() < spec.loss:
            st.lost += 1
            return False
        if spec.corrupt and rnd() < spec.corrupt and len(frame) > _ETH_HLEN:
            bit = self._rng.randrange((len(frame) - _ETH_HLEN) * 8)
            b = bytearray(frame)
            b[_ETH_HLEN + bit // 8] ^= 1 << (bit % 8)
            frame = bytes(b)
            st.corrupted += 1
        copies = 1
        if spec.duplicate and rnd() < spec.duplicate:
            copies = 2
            st.duplicated += 1
        if not spec.timed:
            for _ in range(copies):
                st.delivered += 1
                self._out(frame)
            return True
        ok = False
        for _ in range(copies):
            ok = self._schedule(frame) or ok
        return ok

    def _schedule(self, frame: bytes) -> bool:
        spec = self.spec
        st = self.stats
        if len(self._heap) >= spec.limit:
            st.overlimit += 1
            return False
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        t = now
        if spec.rate_bps:
            t = max(now, self._busy_until) + len(frame) * 8 / spec.rate_bps
            self._busy_until = t
        if spec.reorder and self._rng.random() < spec.reorder:
            st.reordered += 1
        else:
            d = spec.delay_s
            if spec.jitter_s:
                d += self._rng.uniform(-spec.jitter_s, spec.jitter_s)
            t += max(d, 0.0)
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (t, self._seq, frame))
        if heap[0][1] == self._seq:  # a new earliest departure: re-arm the timer
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(t, self._release)
        return True

    def _release(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        heap = self._heap
        now = loop.time()
        out = self._out
        st = self.stats
        while heap and heap[0][0] <= now:
            frame = heapq.heappop(heap)[2]
            st.delivered += 1
            out(frame)
        if heap:
            self._timer = loop.call_at(heap[0][0], self._release)

    def close(self) -> None:
        """Cancel the timer and discard waiting frames."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()


class PortLink:
    """The impaired cable of one port: an ``Impairment`` per impaired direction.

    ``to_port`` impairs frames the switch delivers to the port (None when not impaired),
    ``from_port`` frames the port submits to the switch.
    """

    __slots__ = ("from_port", "spec", "to_port")

    def __init__(
        self,
        spec: LinkSpec,
        port_name: str,
        deliver: Deliver,
        enqueue: Deliver,
        *,
        drop_in: Callable[[bytes], bool] | None = None,
        drop_out: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.spec = spec
        self.to_port = (
            Impairment(spec, deliver, f"{port_name}:in", drop_in)
            if spec.direction in ("both", "in") or drop_in is not None
            else None
        )
        self.from_port = (
            Impairment(spec, enqueue, f"{port_name}:out", drop_out)
            if spec.direction in ("both", "out") or drop_out is not None
            else None
        )

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per direction (``in``: switch -> port, ``out``: port -> switch)."""
        out: dict[str, dict[str, int]] = {}
        if self.to_port is not None:
            out["in"] = self.to_port.stats.as_dict()
        if self.from_port is not None:
            out["out"] = self.from_port.stats.as_dict()
        return out

    def close(self) -> None:
        for imp in (self.to_port, self.from_port):
            if imp is not None:
                imp.close()


def with_seed(spec: LinkSpec, seed: int) -> LinkSpec:
    """``spec`` with another seed (e.g. one per VM)."""
    return replace(spec, seed=seed)
