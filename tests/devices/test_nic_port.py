"""The VM NIC port: filtering, bounded receive queue, edge-triggered on_rx, send results."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from denali.abi import NET_MIN_FRAME, NET_MTU, Result
from denali.devices.nic import NicConfig, NicPort, TxStatus
from denali.errors import ConfigError
from denali.net import Switch, mac_for_vm
from tests.net.helpers import Recorder, bcast, frame, mac, tag_of


def test_for_vm_names_and_mac() -> None:
    nic = NicPort.for_vm(42)
    assert nic.name == "vm42" and nic.mac == nic.fixed_mac == mac_for_vm(42)
    assert nic.rx_capacity == 256 and nic.ingress_capacity == 256
    assert NicPort("x", "02:de:00:00:00:01").fixed_mac == mac(1)
    with pytest.raises(ConfigError):
        NicPort("x", "01:00:5e:00:00:01")  # a NIC's MAC is unicast
    with pytest.raises(ConfigError):
        NicConfig(rx_capacity=0)
    with pytest.raises(ConfigError):
        NicConfig(tx_capacity=0)


def test_deliver_filters_unicast_for_others() -> None:
    nic = NicPort.for_vm(1)
    nic.deliver(frame(1, 2, tag=1))
    nic.deliver(frame(3, 2, tag=2))  # flooded unknown unicast for someone else
    nic.deliver(bcast(2, tag=3))
    nic.deliver(frame(bytes.fromhex("333300000001"), 2, tag=4))
    assert [tag_of(f) for f in nic.receive_nowait(10)] == [1, 3, 4]
    assert nic.stats.drop_filtered == 1 and nic.stats.rx_frames == 3
    promisc = NicPort("p", mac(1), config=NicConfig(promiscuous=True))
    promisc.deliver(frame(3, 2))
    assert promisc.rx_pending == 1 and promisc.stats.drop_filtered == 0


def test_rx_queue_is_bounded_and_counts_drops() -> None:
    nic = NicPort("n", mac(1), config=NicConfig(rx_capacity=3))
    for i in range(5):
        nic.deliver(frame(1, 2, tag=i))
    assert nic.rx_pending == 3
    assert nic.stats.drop_egress_full == 2 and nic.stats.rx_frames == 3
    assert [tag_of(f) for f in nic.receive_nowait(64)] == [0, 1, 2]  # oldest kept
    nic.deliver(frame(1, 2, tag=9))
    assert [tag_of(f) for f in nic.receive_nowait(64)] == [9]


def test_receive_nowait_takes_at_most_max_in_order() -> None:
    nic = NicPort.for_vm(1)
    assert nic.receive_nowait(4) == []
    for i in range(10):
        nic.deliver(frame(1, 2, tag=i))
    assert [tag_of(f) for f in nic.receive_nowait(4)] == [0, 1, 2, 3]
    assert nic.receive_nowait(0) == [] and nic.receive_nowait(-1) == []
    assert [tag_of(f) for f in nic.receive_nowait(4)] == [4, 5, 6, 7]
    assert [tag_of(f) for f in nic.receive_nowait(4)] == [8, 9]
    assert nic.receive_nowait(4) == [] and nic.rx_pending == 0


def test_on_rx_is_edge_triggered() -> None:
    calls: list[int] = []
    nic = NicPort.for_vm(1, on_rx=lambda: calls.append(1))
    nic.deliver(frame(1, 2))
    nic.deliver(frame(1, 2))
    assert len(calls) == 1  # empty -> non-empty only
    nic.receive_nowait(1)
    nic.deliver(frame(1, 2))
    assert len(calls) == 1  # still not empty
    nic.receive_nowait(64)
    nic.deliver(frame(3, 2))  # filtered: no interrupt
    assert len(calls) == 1
    nic.deliver(frame(1, 2))
    assert len(calls) == 2
    nic.on_rx = None
    nic.receive_nowait(64)
    nic.deliver(frame(1, 2))  # no callback set: fine
    full = NicPort("f", mac(1), config=NicConfig(rx_capacity=1), on_rx=lambda: calls.append(2))
    full.deliver(frame(1, 2))
    full.deliver(frame(1, 2))  # dropped: no second call
    assert calls == [1, 1, 2]


def test_clear_rx_counts() -> None:
    nic = NicPort.for_vm(1)
    for _ in range(3):
        nic.deliver(frame(1, 2))
    assert nic.clear_rx() == 3 and nic.rx_pending == 0 and nic.stats.drop_link_down == 3


@pytest.mark.asyncio
async def test_send_results_map_to_guest_codes() -> None:
    sw = Switch()  # not started, so the transmit queue fills
    nic = NicPort("n", mac(1), config=NicConfig(tx_capacity=2))
    sink = Recorder("sink")
    for p in (nic, sink):
        sw.attach(p)
    assert nic.send_nowait(frame(2, 1, size=NET_MIN_FRAME - 1)) is TxStatus.INVALID
    assert nic.send_nowait(frame(2, 1, size=NET_MTU + 1)) is TxStatus.INVALID
    assert nic.stats.drop_malformed == 2
    assert nic.send_nowait(frame(2, 1, size=NET_MIN_FRAME)) is TxStatus.OK
    assert nic.send_nowait(frame(2, 1, size=NET_MTU)) is TxStatus.OK
    assert nic.send_nowait(frame(2, 1)) is TxStatus.FULL
    assert nic.stats.drop_ingress_full == 1 and nic.stats.tx_frames == 2
    assert TxStatus.INVALID.result is Result.INVAL
    assert TxStatus.FULL.result is Result.FULL
    assert TxStatus.OK.result is Result.OK and TxStatus.NO_LINK.result is Result.OK
    await sw.start()
    await sw.join()
    assert [len(f) for f in sink.frames] == [NET_MIN_FRAME, NET_MTU]
    await sw.aclose()


def test_send_without_a_switch_is_dropped_and_counted() -> None:
    nic = NicPort.for_vm(1)
    assert nic.send_nowait(frame(2, 1)) is TxStatus.NO_LINK
    assert nic.send_batch_nowait([frame(2, 1)] * 3) == (3, TxStatus.NO_LINK)
    assert nic.send_batch_nowait([frame(2, 1), b"short"]) == (1, TxStatus.INVALID)
    assert nic.stats.drop_link_down == 5 and nic.stats.drop_malformed == 1


@pytest.mark.asyncio
async def test_send_batch_stops_at_first_invalid_or_full() -> None:
    sw = Switch()
    nic = NicPort("n", mac(1), config=NicConfig(tx_capacity=4))
    sink = Recorder("sink")
    for p in (nic, sink):
        sw.attach(p)
    good = [frame(2, 1, tag=i) for i in range(3)]
    assert nic.send_batch_nowait([*good[:2], b"x" * 59, good[2]]) == (2, TxStatus.INVALID)
    assert nic.stats.drop_malformed == 1 and nic.ingress_pending == 2
    assert nic.send_batch_nowait(good) == (2, TxStatus.FULL)  # room for 2 of 3
    assert nic.stats.drop_ingress_full == 1
    assert nic.send_batch_nowait([]) == (0, TxStatus.OK)
    await sw.start()
    await sw.join()
    assert [tag_of(f) for f in sink.frames] == [0, 1, 0, 1]
    assert nic.send_batch_nowait(good) == (3, TxStatus.OK)
    await sw.join()
    assert [tag_of(f) for f in sink.frames][4:] == [0, 1, 2]
    await sw.aclose()


@pytest.mark.asyncio
async def test_nic_to_nic_through_a_running_switch(switch: Switch) -> None:
    raised: list[str] = []

    def irq(name: str) -> Callable[[], None]:
        return lambda: raised.append(name)

    vms = [NicPort.for_vm(i, on_rx=irq(f"vm{i}")) for i in (1, 2, 3)]
    for v in vms:
        switch.attach(v)
    assert vms[0].send_nowait(frame(2, 1, tag=5)) is TxStatus.OK
    assert vms[2].send_nowait(bcast(3, tag=6)) is TxStatus.OK
    await switch.join()
    assert sorted(raised) == ["vm1", "vm2"]  # vm2 once for two frames; vm3 sent the broadcast
    assert [tag_of(f) for f in vms[1].receive_nowait(64)] == [5, 6]
    assert [tag_of(f) for f in vms[0].receive_nowait(64)] == [6]
    assert vms[2].receive_nowait(64) == []
