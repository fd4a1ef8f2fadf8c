"""What denali boot says about the LAN: the VMs' addresses and how to reach them (pure)."""

from __future__ import annotations

from ipaddress import IPv4Interface

from denali.cli.lan import TapState, VxlanState, describe_addresses, guest_address, lan_lines, suggest_host
from denali.net.tap import HostSide


def test_guest_address_reads_ip_like_the_guest() -> None:
    assert guest_address("x=1 ip=10.0.0.7/16 gw=10.0.0.1") == IPv4Interface("10.0.0.7/16")
    assert guest_address("ip=10.0.0.7") == IPv4Interface("10.0.0.7/24")  # the guest's default prefix
    assert guest_address("ip=10.0.0.300/24") is None and guest_address("n=1") is None


def test_addresses_are_summarised_by_subnet_and_run() -> None:
    many = [IPv4Interface(f"10.64.{i // 256}.{i % 256}/10") for i in range(1, 10001)]
    assert describe_addresses(many) == "10.64.0.1 to 10.64.39.16 (10.64.0.0/10)"
    gaps = [IPv4Interface(f"10.0.0.{i}/24") for i in (1, 2, 3, 7, 9)]
    assert describe_addresses(gaps) == "10.0.0.1 to 10.0.0.3, 10.0.0.7, 10.0.0.9 (10.0.0.0/24)"
    scattered = [IPv4Interface(f"10.0.0.{i}/24") for i in range(1, 40, 2)]
    assert describe_addresses(scattered) == "20 addresses from 10.0.0.1 to 10.0.0.39 (10.0.0.0/24)"
    two = [IPv4Interface("10.1.0.1/24"), IPv4Interface("10.2.0.1/24")]
    assert describe_addresses(two) == "10.1.0.1 (10.1.0.0/24); 10.2.0.1 (10.2.0.0/24)"


def test_suggested_host_address_is_free() -> None:
    vms = [IPv4Interface(f"10.77.0.{i}/24") for i in (1, 254)]
    assert suggest_host(vms) == IPv4Interface("10.77.0.253/24")
    assert suggest_host([IPv4Interface("10.0.0.1/32")]) is None and suggest_host([]) is None


def test_tap_down_gets_the_exact_commands_with_sudo_when_not_root() -> None:
    down = TapState("dtap0", HostSide(False, None))
    lines = lan_lines(["ip=10.77.0.1/24"], [down], [], sudo=True)
    assert lines == [
        "the VM is at 10.77.0.1 (10.77.0.0/24)",
        "dtap0 is down and has no address; to reach the VMs from this host run:",
        "  sudo ip addr add 10.77.0.254/24 dev dtap0 && sudo ip link set dtap0 up",
        "or boot with --net tap:dtap0,host=10.77.0.254/24",
    ]
    up_no_addr = lan_lines(["ip=10.77.0.1/24"], [TapState("t", HostSide(True, None))], [])
    assert "  ip addr add 10.77.0.254/24 dev t" in up_no_addr
    assert "t is up but has no address" in up_no_addr[1]


def test_tap_up_says_how_to_reach_or_why_not() -> None:
    up = TapState("dtap0", HostSide(True, IPv4Interface("10.77.0.254/24")))
    lines = lan_lines([f"ip=10.77.0.{i}/24" for i in (1, 2)], [up], [])
    assert lines == [
        "2 VMs are at 10.77.0.1 to 10.77.0.2 (10.77.0.0/24)",
        "reach them from this host through dtap0 (10.77.0.254/24), e.g. ping 10.77.0.1 "
        "or curl http://10.77.0.1/",
    ]
    elsewhere = lan_lines(["ip=10.0.0.1/16", "ip=10.0.0.2/16"], [up], [])
    assert elsewhere[1] == (
        "2 VM addresses are outside dtap0's subnet 10.77.0.0/24: this host cannot "
        "reach them through dtap0; use --net tap:dtap0,host=10.0.255.254/16"
    )
    clash = lan_lines(["ip=10.77.0.254/24"], [up], [])
    assert "dtap0's host address 10.77.0.254 is also a VM's address" in clash[1]


def test_no_uplink_vxlan_and_quiet_cases() -> None:
    many = [f"ip=10.0.0.{i}/16" for i in range(1, 101)]
    assert lan_lines(many, [], []) == [
        "100 VMs are at 10.0.0.1 to 10.0.0.100 (10.0.0.0/16)",
        "the LAN has no uplink to this host; to reach the VMs add --net tap:dtap0,host=10.0.255.254/16",
    ]
    vx = lan_lines(["ip=10.88.0.1/24"], [], [VxlanState(42, ("192.0.2.2:4789",))])
    assert vx[1] == (
        "the LAN is joined to VXLAN 42 (192.0.2.2:4789): machines on that VXLAN reach the VMs "
        "at their addresses"
    )
    assert lan_lines(["ip=10.0.0.1/24"], [], []) == []  # one VM, no uplink: nothing to say
    assert lan_lines(["n=1", "n=2"], [], []) == []  # no addresses, no ports
    assert lan_lines(["ip=10.0.0.1", "n=2"], [], [])[0] == "1 of 2 VMs are at 10.0.0.1 (10.0.0.0/24)"
