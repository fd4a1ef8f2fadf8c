"""The virtual switched Ethernet LAN: switch, ports, TAP, VXLAN, MAC helpers and pcap capture.

Only re-exports; see each module for contracts.
"""

from denali.net.ethernet import (
    BROADCAST,
    HEADER_LEN,
    MAC_LEN,
    EtherType,
    build_frame,
    dst_mac,
    ethertype,
    format_mac,
    is_broadcast,
    is_multicast,
    is_unicast,
    mac_for_vm,
    parse_mac,
    payload,
    src_mac,
)
from denali.net.pcap import PcapWriter
from denali.net.port import Port, PortStats
from denali.net.switch import Switch, SwitchConfig, SwitchState, SwitchStats

__all__ = (
    "BROADCAST",
    "HEADER_LEN",
    "MAC_LEN",
    "EtherType",
    "PcapWriter",
    "Port",
    "PortStats",
    "Switch",
    "SwitchConfig",
    "SwitchState",
    "SwitchStats",
    "build_frame",
    "dst_mac",
    "ethertype",
    "format_mac",
    "is_broadcast",
    "is_multicast",
    "is_unicast",
    "mac_for_vm",
    "parse_mac",
    "payload",
    "src_mac",
)
