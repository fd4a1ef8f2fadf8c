"""denali._uc: engines take exit requests only at block starts (Unicorn's
``no_exit_request`` flag, whose offset is read from the loaded library's code)."""

from __future__ import annotations

import ctypes
import mmap

from denali import _uc


def test_flag_offset_found_in_the_installed_unicorn() -> None:
    # the project is tested against Unicorn 2.1.x, whose check_exit_request has that shape
    assert _uc.EXIT_CHECK_FLAG is not None
    assert 0 < _uc.EXIT_CHECK_FLAG < 1 << 16


def test_every_engine_has_the_flag_set() -> None:
    assert _uc.EXIT_CHECK_FLAG is not None
    with mmap.mmap(-1, 4096) as page:
        anchor = ctypes.c_char.from_buffer(page)
        eng = _uc.Engine(_uc._NoOwner(), ctypes.addressof(anchor), 4096, 1 << 20)
        try:
            h = eng._h.value
            assert h
            assert ctypes.c_uint8.from_address(h + _uc.EXIT_CHECK_FLAG).value == 1
        finally:
            eng.close()
            del anchor
