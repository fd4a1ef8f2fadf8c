"""The public surface of denali.net."""

from __future__ import annotations

import denali.net


def test_all_is_a_sorted_tuple_of_existing_names() -> None:
    assert isinstance(denali.net.__all__, tuple)
    assert len(set(denali.net.__all__)) == len(denali.net.__all__)
    for name in denali.net.__all__:
        assert getattr(denali.net, name) is not None, name
    assert {
        "Switch",
        "SwitchConfig",
        "Port",
        "PortStats",
        "PcapWriter",
        "mac_for_vm",
        "parse_mac",
        "format_mac",
    } <= set(denali.net.__all__)


def test_port_is_abstract() -> None:
    import pytest

    with pytest.raises(TypeError):
        denali.net.Port("p")  # type: ignore[abstract]
