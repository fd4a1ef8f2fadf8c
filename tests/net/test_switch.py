"""The learning switch: flooding, learning, isolation, ageing, bounds, fairness, lifecycle."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from denali.devices.nic import NicConfig, NicPort
from denali.errors import ConfigError, NetError
from denali.net import Switch, SwitchConfig, SwitchState
from denali.net.ethernet import BROADCAST, parse_mac
from tests.net.helpers import FakeClock, Recorder, bcast, frame, mac, tag_of


def state_of(sw: Switch) -> SwitchState:
    return sw.state  # a call, so a type checker does not carry narrowing across awaits


def three(sw: Switch) -> tuple[Recorder, Recorder, Recorder]:
    ports = Recorder("a"), Recorder("b"), Recorder("c")
    for p in ports:
        sw.attach(p)
    return ports


@pytest.mark.asyncio
async def test_unknown_unicast_floods_then_learning_narrows(switch: Switch) -> None:
    a, b, c = three(switch)
    assert a.submit(frame(2, 1, tag=1))  # nobody knows mac(2): flooded to b and c
    await switch.join()
    assert [tag_of(f) for f in b.frames] == [1] and [tag_of(f) for f in c.frames] == [1]
    assert a.frames == []
    assert switch.lookup(mac(1)) is a  # learned from the source

    assert b.submit(frame(1, 2, tag=2))  # mac(1) is known: only a
    await switch.join()
    assert [tag_of(f) for f in a.frames] == [2]
    assert len(c.frames) == 1 and len(b.frames) == 1
    st = switch.stats()
    assert (st.flooded, st.unknown_unicast, st.unicast, st.fdb_learned) == (1, 1, 1, 2)
    assert st.deliveries == 3


@pytest.mark.asyncio
async def test_unicast_isolation_after_learning(switch: Switch) -> None:
    a, b, c = three(switch)
    a.submit(bcast(1))
    b.submit(bcast(2))
    await switch.join()
    c.frames.clear()
    c_rx = c.stats.rx_frames
    for i in range(100):
        a.submit(frame(2, 1, tag=i))
        b.submit(frame(1, 2, tag=1000 + i))
    await switch.join()
    assert c.frames == []  # the third port never sees unicast between two others
    assert [tag_of(f) for f in b.frames if f[:6] == mac(2)] == list(range(100))
    assert [tag_of(f) for f in a.frames if f[:6] == mac(1)] == list(range(1000, 1100))
    assert c.stats.rx_frames == c_rx == 2


@pytest.mark.asyncio
async def test_broadcast_and_multicast_reach_all_but_sender(switch: Switch) -> None:
    ports = [Recorder(f"p{i}") for i in range(5)]
    for p in ports:
        switch.attach(p)
    ports[2].submit(bcast(3, tag=7))
    ports[0].submit(frame(parse_mac("01:00:5e:00:00:01"), 1, tag=8))
    await switch.join()
    for i, p in enumerate(ports):
        tags = sorted(tag_of(f) for f in p.frames)
        expected = sorted(t for t, sender in ((7, 2), (8, 0)) if sender != i)
        assert tags == expected, p.name
    assert switch.stats().deliveries == 8


@pytest.mark.asyncio
async def test_nics_are_pinned_and_never_see_others_unicast(switch: Switch) -> None:
    nics = [NicPort.for_vm(i) for i in (1, 2, 3)]
    tap = Recorder("tap")
    for n in (*nics, tap):
        switch.attach(n)
    assert switch.lookup(mac(2)) is nics[1]  # pinned at attach, before any traffic
    nics[0].send_nowait(frame(2, 1))
    await switch.join()
    assert nics[1].rx_pending == 1
    assert nics[2].rx_pending == 0 and tap.frames == []  # not even flooded once
    assert switch.stats().flooded == 0


@pytest.mark.asyncio
async def test_spoofed_source_is_dropped_and_counted(switch: Switch) -> None:
    vm1, vm2 = NicPort.for_vm(1), NicPort.for_vm(2)
    tap = Recorder("tap")
    for p in (vm1, vm2, tap):
        switch.attach(p)
    assert vm1.submit(frame(2, 3))  # vm1 claims mac(3)
    assert vm1.submit(bcast(2))  # vm1 claims vm2's MAC
    assert tap.submit(frame(2, 1))  # a port without fixed MAC claims vm1's pinned MAC
    await switch.join()
    assert vm2.rx_pending == 0 and tap.frames == []
    assert vm1.stats.drop_spoofed == 2 and tap.stats.drop_spoofed == 1
    st = switch.stats()
    assert st.drop_spoofed == 3 and st.deliveries == 0
    assert switch.lookup(mac(1)) is vm1 and switch.lookup(mac(3)) is None


@pytest.mark.asyncio
async def test_ageing_forgets_a_learned_mac(switch: Switch, clock: FakeClock) -> None:
    a, b, c = three(switch)
    a.submit(bcast(1))
    await switch.join()
    c.frames.clear()
    clock.t += 299.0
    b.submit(frame(1, 2, tag=1))
    await switch.join()
    assert c.frames == [] and switch.lookup(mac(1)) is a
    clock.t += 1.0  # 300 s since mac(1) was last seen as a source
    assert switch.lookup(mac(1)) is None
    b.submit(frame(1, 2, tag=2))
    await switch.join()
    assert [tag_of(f) for f in c.frames] == [2]  # unknown again: flooded
    st = switch.stats()
    assert st.fdb_expired == 1 and st.fdb_learned == 1  # mac(2) is still fresh


@pytest.mark.asyncio
async def test_traffic_refreshes_a_learned_mac(switch: Switch, clock: FakeClock) -> None:
    a, b, c = three(switch)
    a.submit(bcast(1))
    await switch.join()
    for _ in range(3):
        clock.t += 200.0
        a.submit(bcast(1))  # seen again: timer restarts
        await switch.join()
    c.frames.clear()
    b.submit(frame(1, 2))
    await switch.join()
    assert c.frames == [] and len(a.frames) == 1
    assert switch.stats().fdb_expired == 0


@pytest.mark.asyncio
async def test_learned_mac_moves_between_ports(switch: Switch) -> None:
    a, b, c = three(switch)
    a.submit(bcast(9))
    await switch.join()
    b.submit(bcast(9))  # the host behind mac(9) moved to b
    await switch.join()
    assert switch.lookup(mac(9)) is b
    c.submit(frame(9, 3))
    await switch.join()
    assert [f[:6] for f in b.frames][-1] == mac(9) and not any(f[:6] == mac(9) for f in a.frames)
    assert switch.stats().fdb_moves == 1


@pytest.mark.asyncio
async def test_address_table_is_bounded_and_evictions_counted(clock: FakeClock) -> None:
    async with Switch(SwitchConfig(max_macs=128), clock=clock) as sw:
        a, _b, _c = three(sw)
        for i in range(1000):
            a.submit(bcast(10_000 + i))
            if i % 200 == 199:
                await sw.join()
        await sw.join()
        st = sw.stats()
        assert st.fdb_learned <= 128
        assert st.fdb_evictions >= 1000 - 128
        assert st.fdb_learned + st.fdb_evictions == 1000
        assert sw.lookup(mac(10_999)) is a  # the newest survive
        assert sw.lookup(mac(10_000)) is None


@pytest.mark.asyncio
async def test_frame_to_the_ingress_port_is_dropped(switch: Switch) -> None:
    a, b, c = three(switch)
    a.submit(bcast(1))
    a.submit(bcast(11))
    await switch.join()
    b.frames.clear()
    c.frames.clear()
    a.submit(frame(11, 1))  # both behind a
    vm = NicPort.for_vm(5)
    switch.attach(vm)
    vm.send_nowait(frame(5, 5))  # a VM to itself
    await switch.join()
    assert b.frames == [] and c.frames == [] and vm.rx_pending == 0
    assert a.stats.drop_loopback == 1 and vm.stats.drop_loopback == 1
    assert switch.stats().drop_loopback == 2


@pytest.mark.asyncio
async def test_malformed_frames_are_dropped_and_counted(switch: Switch) -> None:
    a, b, c = three(switch)
    a.submit(b"")
    a.submit(bcast(1)[:13])
    a.submit(frame(2, parse_mac("01:00:5e:00:00:01")))  # multicast source
    a.submit(BROADCAST + mac(1) + b"\x08\x00")  # exactly a header: fine
    await switch.join()
    assert len(b.frames) == 1 and len(c.frames) == 1 and len(b.frames[0]) == 14
    assert a.stats.drop_malformed == 3 and switch.stats().drop_malformed == 3


@pytest.mark.asyncio
async def test_ingress_queue_is_bounded() -> None:
    sw = Switch()  # not started: nothing is drained
    a = Recorder("a", ingress_capacity=4)
    b = Recorder("b")
    sw.attach(a)
    sw.attach(b)
    assert [a.submit(bcast(1, tag=i)) for i in range(6)] == [True] * 4 + [False] * 2
    assert a.stats.drop_ingress_full == 2 and a.stats.tx_frames == 4 and a.ingress_pending == 4
    assert a.submit_many([bcast(1)] * 3) == 0
    assert a.stats.drop_ingress_full == 5
    await sw.start()
    await sw.join()
    assert [tag_of(f) for f in b.frames] == [0, 1, 2, 3]
    assert a.submit_many([bcast(1, tag=10 + i) for i in range(6)]) == 4
    assert a.stats.drop_ingress_full == 7
    await sw.join()
    assert [tag_of(f) for f in b.frames][4:] == [10, 11, 12, 13]
    await sw.aclose()


@pytest.mark.asyncio
async def test_round_robin_a_flooder_does_not_starve_a_single_frame() -> None:
    cfg = SwitchConfig(batch=64)
    async with Switch(cfg) as sw:
        flooder = NicPort("vm1", mac(1), config=_nic_cfg(tx=5000))
        quiet = NicPort.for_vm(2)
        sink = Recorder("sink", mac=mac(3))
        for p in (flooder, quiet, sink):
            sw.attach(p)
        accepted, _ = flooder.send_batch_nowait([frame(3, 1, tag=i) for i in range(5000)])
        assert accepted == 5000
        assert quiet.send_nowait(frame(3, 2, tag=99_999)).result == 0
        await sw.join()
        tags = [tag_of(f) for f in sink.frames]
        assert len(tags) == 5001
        assert tags.index(99_999) <= cfg.batch  # within the first round
        assert [t for t in tags if t != 99_999] == list(range(5000))  # flooder's order kept


@pytest.mark.asyncio
async def test_round_robin_a_frame_arriving_mid_drain_waits_one_round() -> None:
    cfg = SwitchConfig(batch=16, frames_per_yield=10_000)
    async with Switch(cfg) as sw:
        flooder = NicPort("vm1", mac(1), config=_nic_cfg(tx=3000))
        quiet = NicPort.for_vm(2)
        sink = Recorder("sink", mac=mac(3))
        for p in (flooder, quiet, sink):
            sw.attach(p)
        orig = sink.deliver

        def deliver(f: bytes) -> None:  # the quiet VM sends while the flood is being forwarded
            orig(f)
            if len(sink.frames) == 1000:
                quiet.send_nowait(frame(3, 2, tag=99_999))

        sw._names["sink"].deliver = deliver
        flooder.send_batch_nowait([frame(3, 1, tag=i) for i in range(3000)])
        await sw.join()
        tags = [tag_of(f) for f in sink.frames]
        assert 1000 <= tags.index(99_999) <= 1000 + cfg.batch


@pytest.mark.asyncio
async def test_drain_yields_to_the_loop_between_rounds() -> None:
    async with Switch(SwitchConfig(frames_per_yield=256)) as sw:
        src = NicPort("vm1", mac(1), config=_nic_cfg(tx=4096))
        dst = NicPort("vm2", mac(2), config=_nic_cfg(rx=4096))
        sw.attach(src)
        sw.attach(dst)
        src.send_batch_nowait([frame(2, 1, tag=i) for i in range(4096)])
        seen: list[int] = []

        async def observer() -> None:
            while dst.rx_pending < 4096:
                seen.append(dst.rx_pending)
                await asyncio.sleep(0)

        obs = asyncio.create_task(observer())
        await sw.join()
        await obs
        assert any(0 < n < 4096 for n in seen)  # another task ran while the switch worked
        assert max(seen) <= 4096 - 256
        assert sw.stats().drain_passes >= 4096 // 256


@pytest.mark.asyncio
async def test_idle_switch_does_no_work(switch: Switch) -> None:
    a, b, _c = three(switch)
    a.submit(bcast(1))
    await switch.join()
    before = switch.stats().drain_passes
    for _ in range(200):
        await asyncio.sleep(0)
    assert switch.stats().drain_passes == before  # waiting on its event, not polling
    cpu = time.thread_time()  # the loop thread only: other threads cannot disturb it
    await asyncio.sleep(0.1)  # the measurement itself: CPU used by an idle switch over 100 ms
    assert time.thread_time() - cpu < 0.03
    b.submit(bcast(2))
    await switch.join()
    assert switch.stats().drain_passes == before + 1


@pytest.mark.asyncio
async def test_a_port_that_raises_does_not_stop_the_switch(
    switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = three(switch)
    b.fail = True
    a.submit(bcast(1, tag=1))
    a.submit(bcast(1, tag=2))
    await switch.join()
    assert [tag_of(f) for f in c.frames] == [1, 2]
    assert switch.stats().port_errors == 2
    assert sum("raised in deliver" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.asyncio
async def test_lifecycle_and_a_closed_switch_refuses_cleanly() -> None:
    sw = Switch()
    assert sw.state is SwitchState.CREATED
    a, b, _c = three(sw)
    vm = NicPort.for_vm(4)
    sw.attach(vm)
    a.submit(bcast(1))  # queued while created
    await sw.start()
    await sw.start()  # idempotent
    assert state_of(sw) is SwitchState.RUNNING
    await sw.join()
    assert len(b.frames) == 1
    a.submit(bcast(1))
    a.submit(bcast(1))
    await sw.aclose()  # frames still queued are dropped and counted
    assert state_of(sw) is SwitchState.CLOSED
    assert a.stats.drop_link_down == 2
    assert a.switch is None and sw.ports == ()
    assert a.submit(bcast(1)) is False and a.stats.drop_link_down == 3
    assert a.submit_many([bcast(1)] * 2) == 0 and a.stats.drop_link_down == 5
    assert vm.send_nowait(frame(1, 4)).name == "NO_LINK" and vm.stats.drop_link_down == 1
    with pytest.raises(NetError):
        sw.attach(Recorder("late"))
    with pytest.raises(NetError):
        await sw.start()
    await sw.join()  # returns at once
    await sw.aclose()  # idempotent
    assert sw.stats().state == "closed" and sw.stats().drop_link_down == 2


@pytest.mark.asyncio
async def test_attach_and_detach_rules(switch: Switch) -> None:
    a = Recorder("a")
    switch.attach(a)
    with pytest.raises(NetError):
        switch.attach(a)
    with pytest.raises(ConfigError):
        switch.attach(Recorder("a"))
    vm = NicPort.for_vm(1)
    switch.attach(vm)
    with pytest.raises(ConfigError):
        switch.attach(NicPort("other", mac(1)))
    other = Switch()
    with pytest.raises(NetError):
        other.detach(vm)
    switch.detach(vm)
    assert vm.switch is None and switch.lookup(mac(1)) is None and switch.port("vm1") is None
    other.attach(vm)
    assert vm.switch is other
    await other.aclose()
    with pytest.raises(ConfigError):
        Switch(SwitchConfig(ageing_s=0))
    with pytest.raises(ConfigError):
        Switch(SwitchConfig(batch=0))


@pytest.mark.asyncio
async def test_detach_forgets_learned_macs_and_drops_queued_frames() -> None:
    sw = Switch()
    a, b, c = three(sw)
    await sw.start()
    a.submit(bcast(1))
    a.submit(bcast(11))
    await sw.join()
    assert sw.lookup(mac(11)) is a
    a.submit(bcast(1))
    sw.detach(a)  # before the switch drained it
    assert a.stats.drop_link_down == 1 and sw.lookup(mac(11)) is None
    await sw.join()
    assert len(b.frames) == 2 and sw.stats().fdb_learned == 0
    b.submit(frame(11, 2))
    await sw.join()
    assert len(c.frames) == 3  # flooded: unknown again
    await sw.aclose()


@pytest.mark.asyncio
async def test_stats_snapshot_is_plain_data_and_frozen(switch: Switch) -> None:
    a, b, _c = three(switch)
    a.submit(bcast(1))
    await switch.join()
    snap = switch.stats()
    b.submit(frame(1, 2))
    await switch.join()
    assert snap.frames == 1 and snap.port_stats["a"].rx_frames == 0  # unchanged
    now = switch.stats()
    assert now.frames == 2 and now.port_stats["a"].rx_frames == 1
    data = now.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["port_stats"]["a"]["tx_frames"] == 1 and data["port_stats"]["b"]["drops"] == 0
    with pytest.raises(AttributeError):
        now.frames = 0  # type: ignore[misc]
    totals = switch.stats(per_port=False)
    assert totals.frames == 2 and totals.port_stats == {}


@pytest.mark.asyncio
async def test_many_ports_unicast_is_o1_per_frame() -> None:
    """1,000 NICs: unicast touches only its destination, and costs the same as with 2 ports."""
    async with Switch() as sw:
        nics = [NicPort.for_vm(i) for i in range(1, 1001)]
        for n in nics:
            sw.attach(n)
        for i, n in enumerate(nics):
            n.send_nowait(frame(nics[(i + 1) % 1000].fixed_mac, n.fixed_mac, tag=i))
        await sw.join()
        st = sw.stats()
        assert (st.frames, st.unicast, st.deliveries, st.flooded) == (1000, 1000, 1000, 0)
        for i, n in enumerate(nics):
            got = n.receive_nowait(10)
            assert [tag_of(f) for f in got] == [(i - 1) % 1000]
            assert n.stats.drop_filtered == 0

    async def per_frame(extra_ports: int) -> float:
        async with Switch() as sw:
            a = NicPort("a", mac(1), config=_nic_cfg(tx=4096))
            b = NicPort("b", mac(2), config=_nic_cfg(rx=4096))
            for p in (a, b, *(NicPort.for_vm(100 + i) for i in range(extra_ports))):
                sw.attach(p)
            frames = [frame(2, 1, tag=i) for i in range(4000)]
            best = float("inf")
            for _ in range(5):
                loop = asyncio.get_running_loop()
                t = loop.time()
                a.send_batch_nowait(frames)
                await sw.join()
                best = min(best, loop.time() - t)
                b.receive_nowait(5000)
            return best / len(frames)

    small, large = await per_frame(0), await per_frame(1000)
    assert large < 3 * small, (small, large)  # a per-frame scan of 1,000 ports would be ~100x


def _nic_cfg(*, tx: int = 256, rx: int = 256) -> NicConfig:
    return NicConfig(rx_capacity=rx, tx_capacity=tx)


@pytest.mark.asyncio
async def test_mutable_buffers_are_frozen_on_submit(switch: Switch) -> None:
    a, b, _c = three(switch)
    buf = bytearray(bcast(1, tag=1))
    assert a.submit(buf)  # type: ignore[arg-type]
    second = bytearray(bcast(1, tag=2))
    assert a.submit_many([second, memoryview(bcast(1, tag=3))]) == 2  # type: ignore[list-item]
    buf[14:18] = b"\xff" * 4  # the sender scribbles after sending
    second[14:18] = b"\xff" * 4
    await switch.join()
    assert [tag_of(f) for f in b.frames] == [1, 2, 3]
    assert all(type(f) is bytes for f in b.frames)


@pytest.mark.asyncio
async def test_a_failed_drain_task_is_reported_not_hung(caplog: pytest.LogCaptureFixture) -> None:
    broken = FakeClock()
    sw = Switch(clock=broken)
    a, _b, _c = three(sw)
    await sw.start()
    del broken.t  # the clock now raises: a stand-in for a bug inside the switch
    a.submit(bcast(1))
    with pytest.raises(NetError):
        await sw.join()
    assert any("drain task failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(NetError):
        await sw.aclose()
    assert state_of(sw) is SwitchState.CLOSED and a.switch is None
    assert a.stats.drop_link_down == 1
