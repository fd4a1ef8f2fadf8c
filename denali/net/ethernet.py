"""Ethernet II frames and MAC addresses: offset constants, accessors, parsing and formatting.

A frame is a ``bytes`` object holding destination MAC, source MAC, EtherType and
payload, without preamble or FCS (what a guest hands to ``NET_SEND``). A MAC address is
a ``bytes`` object of exactly 6 bytes; ``parse_mac``/``format_mac`` convert to and from
the usual ``"aa:bb:cc:dd:ee:ff"`` text.

Accessors (``dst_mac``, ``src_mac``, ``ethertype``, ``payload``) raise ``ConfigError``
when the frame is shorter than an Ethernet header. The switch's forwarding loop does not
call them: it checks the length once and reads the fields by offset itself.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

from denali.abi import NET_MIN_FRAME
from denali.errors import ConfigError

MAC_LEN: Final = 6
"""Bytes in a MAC address."""
DST_OFFSET: Final = 0
"""Offset of the destination MAC in a frame."""
SRC_OFFSET: Final = 6
"""Offset of the source MAC in a frame."""
ETHERTYPE_OFFSET: Final = 12
"""Offset of the big-endian 16-bit EtherType in a frame."""
PAYLOAD_OFFSET: Final = 14
"""Offset of the payload in a frame."""
HEADER_LEN: Final = 14
"""Length of an Ethernet II header; a shorter frame is malformed."""

MAX_FRAME: Final = 1518
"""Longest frame the LAN carries: 1514 bytes of Ethernet (no FCS) plus a VLAN tag."""
BROADCAST: Final = b"\xff" * MAC_LEN
"""The broadcast address ff:ff:ff:ff:ff:ff."""

_ETHERTYPE: Final = struct.Struct("!H")
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class EtherType(IntEnum):
    """A few EtherType values, for tests and tools; any 16-bit value may appear on the wire."""

    IPV4 = 0x0800
    ARP = 0x0806
    VLAN = 0x8100
    IPV6 = 0x86DD


# ---- MAC addresses ----


def parse_mac(text: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` (or ``-`` separated) as 6 bytes; ``ConfigError`` if malformed."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != MAC_LEN or any(len(p) != 2 or not _HEX.issuperset(p) for p in parts):
        raise ConfigError(f"not a MAC address: {text!r} (expected six hex pairs like 02:de:00:00:00:01)")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    """6 bytes as ``"aa:bb:cc:dd:ee:ff"`` (lower case); ``ConfigError`` if not 6 bytes."""
    return check_mac(mac).hex(":")


def check_mac(mac: bytes | bytearray) -> bytes:
    """``mac`` as an immutable 6-byte ``bytes``; ``ConfigError`` if it has another length."""
    if len(mac) != MAC_LEN:
        raise ConfigError(f"a MAC address has {MAC_LEN} bytes, not {len(mac)}")
    return bytes(mac)


def as_mac(value: bytes | bytearray | str) -> bytes:
    """Accept a MAC as 6 bytes or as text; return 6 bytes (``ConfigError`` if invalid)."""
    return parse_mac(value) if isinstance(value, str) else check_mac(value)


def is_multicast(mac: bytes) -> bool:
    """True for a group address (I/G bit set), broadcast included."""
    return bool(mac[0] & 0x01)


def is_broadcast(mac: bytes) -> bool:
    """True for ff:ff:ff:ff:ff:ff."""
    return mac == BROADCAST


def is_unicast(mac: bytes) -> bool:
    """True for an individual address (I/G bit clear), the all-zero address included."""
    return not mac[0] & 0x01


def is_local(mac: bytes) -> bool:
    """True for a locally administered address (U/L bit set)."""
    return bool(mac[0] & 0x02)


def mac_for_vm(vm_id: int, tag: int = 0xDE) -> bytes:
    """The MAC of VM ``vm_id``: ``02``, the kernel's ``tag`` byte, then ``vm_id`` as 4
    bytes big-endian (the one scheme: every kernel's VMs get theirs this way).

    Locally administered and unicast, so it never collides with a vendor's address.
    Raises ``ConfigError`` unless ``0 <= vm_id < 2**32`` and ``0 <= tag < 256``.
    """
    if not 0 <= vm_id <= 0xFFFF_FFFF:
        raise ConfigError(f"VM id {vm_id} does not fit in 32 bits")
    if not 0 <= tag <= 0xFF:
        raise ConfigError(f"MAC tag {tag} is not a byte")
    return bytes((0x02, tag)) + vm_id.to_bytes(4, "big")


# ---- frames ----


def _need_header(frame: bytes) -> None:
    if len(frame) < HEADER_LEN:
        raise ConfigError(f"a frame of {len(frame)} bytes is shorter than an Ethernet header ({HEADER_LEN})")


def dst_mac(frame: bytes) -> bytes:
    """The destination MAC (6 bytes)."""
    _need_header(frame)
    return frame[DST_OFFSET : DST_OFFSET + MAC_LEN]


def src_mac(frame: bytes) -> bytes:
    """The source MAC (6 bytes)."""
    _need_header(frame)
    return frame[SRC_OFFSET : SRC_OFFSET + MAC_LEN]


def ethertype(frame: bytes) -> int:
    """The EtherType (or 802.3 length) field as an integer."""
    _need_header(frame)
    return int(_ETHERTYPE.unpack_from(frame, ETHERTYPE_OFFSET)[0])


def payload(frame: bytes) -> bytes:
    """Everything after the 14-byte header (padding included)."""
    _need_header(frame)
    return frame[PAYLOAD_OFFSET:]


def build_frame(dst: bytes, src: bytes, ether_type: int, data: bytes = b"", *, pad: bool = True) -> bytes:
    """A frame from its parts; with ``pad`` it is zero-padded to ``NET_MIN_FRAME`` (60) bytes.

    Raises ``ConfigError`` for a MAC that is not 6 bytes or an EtherType outside 16 bits.
    """
    if not 0 <= ether_type <= 0xFFFF:
        raise ConfigError(f"EtherType {ether_type:#x} does not fit in 16 bits")
    frame = check_mac(dst) + check_mac(src) + _ETHERTYPE.pack(ether_type) + data
    if pad and len(frame) < NET_MIN_FRAME:
        frame += bytes(NET_MIN_FRAME - len(frame))
    return frame
