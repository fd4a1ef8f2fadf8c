"""Link impairment on switch ports: the text form, seeded decisions, each effect measured
on real frames through a running switch."""

from __future__ import annotations

import asyncio
import time

import pytest

from denali.errors import ConfigError
from denali.net import Switch
from denali.net.impair import Impairment, LinkSpec
from tests.net.helpers import Recorder, frame, mac, tag_of


def test_parse_every_option() -> None:
    s = LinkSpec.parse(
        "loss=5%,delay=20ms,jitter=500us,reorder=0.25,duplicate=1%,corrupt=0.1%,"
        "rate=10mbit,limit=50,seed=7,dir=in"
    )
    assert s.loss == pytest.approx(0.05) and s.delay_s == pytest.approx(0.02)
    assert s.jitter_s == pytest.approx(0.0005) and s.reorder == 0.25
    assert s.duplicate == pytest.approx(0.01) and s.corrupt == pytest.approx(0.001)
    assert s.rate_bps == 10e6 and s.limit == 50 and s.seed == 7 and s.direction == "in"
    assert LinkSpec.parse("delay=1.5s").delay_s == 1.5
    assert LinkSpec.parse("delay=3").delay_s == pytest.approx(0.003)  # bare number: ms
    assert LinkSpec.parse(str(s)) == s
    assert str(LinkSpec()) == "clean"


@pytest.mark.parametrize(
    "bad",
    [
        "loss=150%",
        "loss=x",
        "delay=-1ms",
        "delay=5parsecs",
        "rate=fast",
        "limit=0",
        "dir=sideways",
        "colour=red",
        "loss",
        "seed=1.5",
    ],
)
def test_bad_specs_are_one_clear_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="link"):
        LinkSpec.parse(bad)


def _run_inline(spec: LinkSpec, n: int) -> tuple[list[bytes], Impairment]:
    out: list[bytes] = []
    imp = Impairment(spec, out.append, "p:in")
    for i in range(n):
        imp.push(frame(1, 2, i))
    return out, imp


def test_loss_is_seeded_and_near_its_rate() -> None:
    out1, imp = _run_inline(LinkSpec(loss=0.05, seed=3), 20000)
    out2, _ = _run_inline(LinkSpec(loss=0.05, seed=3), 20000)
    out3, _ = _run_inline(LinkSpec(loss=0.05, seed=4), 20000)
    assert [tag_of(f) for f in out1] == [tag_of(f) for f in out2]  # same seed, same frames lost
    assert [tag_of(f) for f in out1] != [tag_of(f) for f in out3]
    assert 0.04 < imp.stats.lost / 20000 < 0.06
    assert imp.stats.lost + len(out1) == 20000


def test_duplicate_and_corrupt() -> None:
    out, imp = _run_inline(LinkSpec(duplicate=0.1, seed=1), 5000)
    assert len(out) == 5000 + imp.stats.duplicated and 400 < imp.stats.duplicated < 600
    clean = frame(1, 2, 9)
    out, imp = _run_inline(LinkSpec(corrupt=1.0, seed=1), 200)
    assert imp.stats.corrupted == 200
    for i, f in enumerate(out):
        ref = frame(1, 2, i)
        diff = [(a ^ b) for a, b in zip(f, ref, strict=True)]
        assert diff[:14] == [0] * 14  # the Ethernet header is never touched
        assert sum(bin(d).count("1") for d in diff) == 1  # exactly one bit flipped
    assert clean == frame(1, 2, 9)


class Stamped(Recorder):
    """A recorder that also notes when each frame arrived."""

    __slots__ = ("times",)

    def __init__(self, name: str, *, mac: bytes | None = None) -> None:
        super().__init__(name, mac=mac)
        self.times: list[float] = []

    def deliver(self, frame: bytes) -> None:
        self.times.append(time.monotonic())
        super().deliver(frame)


async def _through_switch(spec: LinkSpec, n: int, gap: float = 0.0) -> tuple[Stamped, list[float], float]:
    """Send n frames a -> b through a switch, b's link impaired; arrival times of each."""
    async with Switch() as sw:
        a, b = Recorder("a", mac=mac(1)), Stamped("b", mac=mac(2))
        sw.attach(a)
        sw.attach(b)
        b.set_link(spec)
        arrivals = b.times
        t0 = time.monotonic()
        for i in range(n):
            a.submit(frame(2, 1, i))
            if gap:
                await asyncio.sleep(gap)
        for _ in range(400):
            if len(b.frames) >= n - b.stats.drop_impaired:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return b, [t - t0 for t in arrivals], t0


async def test_delay_holds_every_frame_and_keeps_order() -> None:
    b, times, _ = await _through_switch(LinkSpec(delay_s=0.05), 20)
    assert len(b.frames) == 20
    assert min(times) >= 0.049
    assert [tag_of(f) for f in b.frames] == list(range(20))


async def test_jitter_and_reorder_reorder_frames() -> None:
    b, _, _ = await _through_switch(LinkSpec(delay_s=0.02, reorder=0.3, seed=5), 100)
    tags = [tag_of(f) for f in b.frames]
    assert sorted(tags) == list(range(100)) and tags != list(range(100))
    assert b.link is not None and b.link.to_port is not None and b.link.to_port.stats.reordered > 10
    b, _, _ = await _through_switch(LinkSpec(delay_s=0.01, jitter_s=0.009, seed=5), 100, gap=0.0005)
    tags = [tag_of(f) for f in b.frames]
    assert sorted(tags) == list(range(100)) and tags != list(range(100))


async def test_rate_limit_paces_frames() -> None:
    # 60-byte frames at 48 kbit/s: 10 ms each; 20 frames take ~200 ms.
    b, times, _ = await _through_switch(LinkSpec(rate_bps=48000), 20)
    assert len(b.frames) == 20
    # never early: frame i leaves no sooner than i + 1 serialization times after the start
    # (a busy event loop may release late ones together)
    assert all(t >= (i + 1) * 0.01 - 0.002 for i, t in enumerate(times)), times


async def test_limit_drops_beyond_the_queue_and_counts() -> None:
    b, _, _ = await _through_switch(LinkSpec(delay_s=0.05, limit=5), 20)
    assert len(b.frames) == 5 and b.stats.drop_impaired == 15
    assert b.link is not None and b.link.to_port is not None and b.link.to_port.stats.overlimit == 15


async def test_both_directions_and_lan_wide_links() -> None:
    async with Switch() as sw:
        sw.set_link(LinkSpec(loss=1.0, direction="out"))
        a, b = Recorder("a", mac=mac(1)), Recorder("b", mac=mac(2))
        sw.attach(a)
        sw.attach(b)  # attached later: gets the LAN's link too
        assert a.submit(frame(2, 1)) is True  # a lost frame looks sent, as on a cable
        await sw.join()
        assert b.frames == [] and a.stats.drop_impaired == 1
        sw.set_link(None)
        a.submit(frame(2, 1))
        await sw.join()
        assert len(b.frames) == 1


async def test_detaching_a_port_drops_what_its_link_holds() -> None:
    async with Switch() as sw:
        a, b = Recorder("a", mac=mac(1)), Recorder("b", mac=mac(2))
        sw.attach(a)
        sw.attach(b)
        b.set_link(LinkSpec(delay_s=0.05))
        a.submit(frame(2, 1))
        await sw.join()
        assert b.link is not None and b.link.to_port is not None and b.link.to_port.waiting == 1
        sw.detach(b)
        assert b.link.to_port.waiting == 0
        await asyncio.sleep(0.08)
        assert b.frames == []


def test_cli_link_option() -> None:
    """``denali boot --link``: a good spec boots, a bad one is one clear line."""
    import subprocess
    import sys

    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "denali",
            "boot",
            "hello",
            "--link",
            "loss=1%,delay=1ms,seed=3",
            "--link",
            "lan:jitter=1ms",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "denali", "boot", "hello", "--link", "net:loss=150%"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == ["denali: link loss must be between 0 and 100%, not 150%"]
    twice = subprocess.run(
        [sys.executable, "-m", "denali", "boot", "hello", "--link", "delay=1ms", "--link", "vms:delay=2ms"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert twice.returncode != 0 and "given twice" in twice.stderr
