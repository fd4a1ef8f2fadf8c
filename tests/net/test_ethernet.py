"""MAC helpers and frame accessors."""

from __future__ import annotations

import pytest

from denali.abi import NET_MIN_FRAME
from denali.errors import ConfigError
from denali.net import ethernet as eth


def test_parse_and_format_round_trip() -> None:
    mac = eth.parse_mac("02:DE:00:00:00:2a")
    assert mac == b"\x02\xde\x00\x00\x00\x2a"
    assert eth.format_mac(mac) == "02:de:00:00:00:2a"
    assert eth.parse_mac("02-de-00-00-00-2a") == mac


@pytest.mark.parametrize(
    "text",
    [
        "",
        "02:de:00:00:00",
        "02:de:00:00:00:00:00",
        "02:de:00:00:00:g0",
        "2:de:00:00:00:00",
        "02:de:00:00:00:+1",
        "02de.0000.0001",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError):
        eth.parse_mac(text)


def test_check_mac_length() -> None:
    with pytest.raises(ConfigError):
        eth.format_mac(b"\x00" * 5)
    assert eth.as_mac(bytearray(6)) == bytes(6)
    assert isinstance(eth.as_mac(bytearray(6)), bytes)


def test_mac_for_vm_is_local_unicast_big_endian() -> None:
    mac = eth.mac_for_vm(0x01020304)
    assert mac == b"\x02\xde\x01\x02\x03\x04"
    assert eth.is_unicast(mac) and eth.is_local(mac) and not eth.is_multicast(mac)
    assert eth.mac_for_vm(0) != eth.mac_for_vm(1)
    assert eth.mac_for_vm(0xFFFF_FFFF) == b"\x02\xde\xff\xff\xff\xff"
    for bad in (-1, 1 << 32):
        with pytest.raises(ConfigError):
            eth.mac_for_vm(bad)


def test_group_addresses() -> None:
    assert eth.is_broadcast(eth.BROADCAST) and eth.is_multicast(eth.BROADCAST)
    ipv6_mcast = eth.parse_mac("33:33:00:00:00:01")
    assert eth.is_multicast(ipv6_mcast) and not eth.is_broadcast(ipv6_mcast)
    assert not eth.is_multicast(eth.parse_mac("00:11:22:33:44:55"))
    assert not eth.is_local(eth.parse_mac("00:11:22:33:44:55"))


def test_accessors_read_the_header() -> None:
    dst, src = eth.mac_for_vm(7), eth.mac_for_vm(9)
    f = eth.build_frame(dst, src, eth.EtherType.ARP, b"xyz")
    assert len(f) == NET_MIN_FRAME
    assert eth.dst_mac(f) == dst and f[eth.DST_OFFSET : eth.DST_OFFSET + 6] == dst
    assert eth.src_mac(f) == src and f[eth.SRC_OFFSET : eth.SRC_OFFSET + 6] == src
    assert eth.ethertype(f) == 0x0806
    assert eth.payload(f).startswith(b"xyz") and len(eth.payload(f)) == NET_MIN_FRAME - eth.HEADER_LEN
    unpadded = eth.build_frame(dst, src, 0x1234, b"q", pad=False)
    assert len(unpadded) == 15 and eth.ethertype(unpadded) == 0x1234


def test_accessors_reject_short_frames() -> None:
    short = bytes(13)
    for accessor in (eth.dst_mac, eth.src_mac, eth.ethertype, eth.payload):
        with pytest.raises(ConfigError):
            accessor(short)
    assert eth.payload(bytes(14)) == b""


def test_build_frame_checks_arguments() -> None:
    with pytest.raises(ConfigError):
        eth.build_frame(bytes(5), bytes(6), 0x800)
    with pytest.raises(ConfigError):
        eth.build_frame(bytes(6), bytes(6), 0x10000)
