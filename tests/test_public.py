"""The supported surface of ``denali`` (docs/api.md): exported, typed, nothing internal."""

from __future__ import annotations

import dataclasses
import typing

import denali
from denali import lowlevel


def test_all_is_a_sorted_tuple_of_existing_names() -> None:
    assert isinstance(denali.__all__, tuple)
    assert list(denali.__all__) == sorted(denali.__all__)
    for name in denali.__all__:
        assert getattr(denali, name) is not None, name
    # the types in spawn's contract are exported
    assert {
        "Kernel",
        "KernelConfig",
        "Vm",
        "VmState",
        "DiskSpec",
        "NicConfig",
        "DiskError",
        "Console",
        "GuestFault",
        "FaultReport",
        "Image",
    } <= set(denali.__all__)


def test_no_internal_is_exported() -> None:
    internals = {
        "Runtime",
        "VCpu",
        "GuestMemory",
        "HypercallTable",
        "Preemptor",
        "CpuArbiter",
        "Swapper",
        "Gatekeeper",
        "SwapStore",
        "WouldBlock",
    }
    assert not internals & set(denali.__all__)
    assert {"GuestMemory", "VCpu", "Runtime", "guest_memory"} <= set(lowlevel.__all__)


def test_kernel_options_are_the_config_fields() -> None:
    fields = {f.name: f.type for f in dataclasses.fields(denali.KernelConfig)}
    hints = typing.get_type_hints(denali.KernelOptions)
    assert set(hints) == set(fields)


def test_version_has_one_source() -> None:
    from importlib.metadata import version

    from denali._version import __version__

    assert denali.__version__ == __version__
    assert version("denali") == __version__
