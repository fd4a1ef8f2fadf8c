"""GuestMemory: range checks against the page map, and the dirty pages they mark while
pages are tracked (denali/memory.py)."""

from __future__ import annotations

from denali import abi
from denali.memory import PROT_R, PROT_RW, PROT_W, GuestMemory, Region

PAGE = abi.PAGE_SIZE


def _memory() -> GuestMemory:
    mem = GuestMemory(1 << 20)
    mem.set_regions(
        [
            Region(0x10000, 0x11000, PROT_R, "ro"),
            Region(0x20000, 0x30000, PROT_RW, "rw"),
        ]
    )
    return mem


def _dirty_pages(mem: GuestMemory) -> list[int]:
    return [i for i, d in enumerate(mem.take_dirty()) if d]


def test_a_write_check_accepted_marks_its_pages_and_a_refused_one_marks_none() -> None:
    mem = _memory()
    try:
        mem.start_tracking()
        assert mem.check(0x20000 + PAGE - 4, 8, PROT_W)  # two pages of "rw"
        assert _dirty_pages(mem) == [0x20, 0x21]
        assert not mem.check(0x10000, 16, PROT_W)  # read-only
        assert not mem.check(0x2F000, 2 * PAGE, PROT_W)  # runs off "rw" into nothing
        assert not mem.check(0x40000, 4, PROT_RW)  # unmapped
        assert not mem.check(-4, 8, PROT_W) and not mem.check(0x20000, -1, PROT_W)
        assert _dirty_pages(mem) == []
        assert mem.check(0x10000, 16, PROT_R) and mem.check(0x20000, PAGE, PROT_R)
        assert _dirty_pages(mem) == []  # reading marks nothing
        assert mem.check(0x20000, 0, PROT_W)  # empty: accepted, nothing to mark
        assert _dirty_pages(mem) == []
    finally:
        mem.close()


def test_checks_mark_nothing_while_pages_are_not_tracked() -> None:
    mem = _memory()
    try:
        assert mem.check(0x20000, 4, PROT_W) and mem.dirty is None
    finally:
        mem.close()
