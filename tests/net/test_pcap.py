"""Capture of forwarded frames to pcap, read back with dpkt."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dpkt
import pytest

from denali.devices.nic import NicPort
from denali.errors import ConfigError, NetError
from denali.net import PcapWriter, Switch
from denali.net.pcap import LINKTYPE_ETHERNET
from tests.net.helpers import Recorder, bcast, frame


def read_pcap(path: Path) -> tuple[list[tuple[float, bytes]], int]:
    with path.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        return [(ts, bytes(buf)) for ts, buf in reader], reader.datalink()


@pytest.mark.asyncio
async def test_capture_has_the_exact_forwarded_frames_in_order(switch: Switch, tmp_path: Path) -> None:
    vm1, vm2, vm3 = (NicPort.for_vm(i) for i in (1, 2, 3))
    for v in (vm1, vm2, vm3):
        switch.attach(v)
    path = tmp_path / "lan.pcap"
    sent = [frame(2, 1, tag=0), bcast(3, tag=1), frame(1, 2, tag=2, size=1514), frame(3, 1, tag=3, size=333)]
    writer = await switch.capture(path)
    assert isinstance(writer, PcapWriter)
    vm1.send_nowait(sent[0])
    vm3.send_nowait(sent[1])
    vm2.send_nowait(frame(2, 9))  # spoofed: not forwarded, not captured
    await switch.join()
    vm2.send_nowait(sent[2])
    vm1.send_nowait(sent[3])
    await switch.join()
    assert await switch.stop_capture() is writer
    assert await switch.stop_capture() is None
    records, linktype = read_pcap(path)
    assert linktype == LINKTYPE_ETHERNET
    assert [buf for _, buf in records] == sent
    stamps = [ts for ts, _ in records]
    assert stamps == sorted(stamps) and stamps[0] > 1e9  # wall clock, microseconds
    assert writer.written == 4 and writer.dropped == 0
    vm1.send_nowait(frame(2, 1))  # after stop: not in the file
    await switch.join()
    assert len(read_pcap(path)[0]) == 4


@pytest.mark.asyncio
async def test_capture_as_async_context(switch: Switch, tmp_path: Path) -> None:
    a, b = Recorder("a"), Recorder("b")
    switch.attach(a)
    switch.attach(b)
    path = tmp_path / "ctx.pcap"
    async with switch.capture(path) as writer:
        for i in range(50):
            a.submit(bcast(1, tag=i))
        await switch.join()
        assert switch.stats().capture_dropped == 0
        with pytest.raises(NetError):
            await switch.capture(tmp_path / "second.pcap")  # one capture at a time
    assert writer.state == "stopped"
    assert [buf for _, buf in read_pcap(path)[0]] == [bcast(1, tag=i) for i in range(50)]


@pytest.mark.asyncio
async def test_capture_queue_is_bounded_and_drops_are_counted(
    switch: Switch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Recorder("a", ingress_capacity=1000), Recorder("b")
    switch.attach(a)
    switch.attach(b)
    path = tmp_path / "small.pcap"
    writer = await switch.capture(path, queue_frames=8)
    a.submit_many([bcast(1, tag=i) for i in range(200)])  # one pass: the writer cannot keep up
    await switch.join()
    dropped = switch.stats().capture_dropped
    await switch.stop_capture()
    assert dropped > 0 and writer.dropped == dropped
    warned = [r.getMessage() for r in caplog.records if r.name == "denali.net.pcap"]
    assert warned == [
        f"capture to {path}: queue full (8 frames); frames beyond it are dropped from the capture and counted"
    ], warned  # once, not once per frame
    assert writer.written + writer.dropped == 200
    got = read_pcap(path)[0]
    assert len(got) == writer.written
    assert [buf for _, buf in got] == [bcast(1, tag=i) for i in range(len(got))]  # the first ones
    assert len(b.frames) == 200  # forwarding never waited for the capture


@pytest.mark.asyncio
async def test_capture_errors(tmp_path: Path) -> None:
    sw = Switch()
    with pytest.raises(NetError):
        await sw.capture(tmp_path / "missing-dir" / "x.pcap")
    await sw.aclose()
    with pytest.raises(NetError):
        await sw.capture(tmp_path / "x.pcap")
    with pytest.raises(ConfigError):
        PcapWriter(tmp_path / "y.pcap", queue_frames=0)


@pytest.mark.asyncio
async def test_a_failed_write_is_logged_when_it_happens(
    switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Recorder("a", ingress_capacity=1000), Recorder("b")
    switch.attach(a)
    switch.attach(b)
    writer = await switch.capture("/dev/full")  # every write fails: ENOSPC
    deadline = asyncio.get_running_loop().time() + 10
    while writer.state != "stopped":  # the writer ends at its first failed write
        assert asyncio.get_running_loop().time() < deadline
        a.submit_many([bcast(1, tag=i) for i in range(100)])
        await switch.join()
        await asyncio.sleep(0.01)
    warned = [r for r in caplog.records if r.name == "denali.net.pcap"]
    assert len(warned) == 1 and warned[0].levelname == "WARNING", warned
    assert warned[0].getMessage().startswith("capture to /dev/full failed, frames are no longer captured:")
    with pytest.raises(NetError):
        await switch.stop_capture()


@pytest.mark.asyncio
async def test_closing_the_switch_stops_the_capture(tmp_path: Path) -> None:
    path = tmp_path / "close.pcap"
    async with Switch() as sw:
        a, b = Recorder("a"), Recorder("b")
        sw.attach(a)
        sw.attach(b)
        writer = await sw.capture(path)
        a.submit(bcast(1))
        await sw.join()
    assert writer.state == "stopped"
    assert [buf for _, buf in read_pcap(path)[0]] == [bcast(1)]


@pytest.mark.asyncio
async def test_writer_never_runs_on_the_packet_path(tmp_path: Path) -> None:
    w = PcapWriter(tmp_path / "w.pcap", clock=lambda: 1_700_000_000_123_456_789)
    assert w.offer(b"x" * 60) is False and w.dropped == 1  # not started
    await w.start()
    with pytest.raises(NetError):
        await w.start()
    assert w.offer(b"y" * 60)
    await asyncio.sleep(0)
    await w.stop()
    await w.stop()
    records, _ = read_pcap(tmp_path / "w.pcap")
    assert [buf for _, buf in records] == [b"y" * 60]
    assert records[0][0] == pytest.approx(1_700_000_000.123456)
    assert w.offer(b"z" * 60) is False and w.dropped == 2
