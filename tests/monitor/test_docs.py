"""The worked example of docs/monitors.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from denali.abi import Hc
from tests.conftest import need_image

DOC = Path(__file__).resolve().parents[2] / "docs" / "monitors.md"


def example() -> str:
    text = DOC.read_text()
    section = text.split("## A worked example", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m is not None
    return m.group(1)


async def test_the_worked_example() -> None:
    need_image("test-print")
    ns: dict[str, Any] = {}
    exec(compile(example(), str(DOC), "exec"), ns)
    printed, swallowed = await ns["main"]()
    line = len(f"line {1:10d} of the flood .....................................\n")
    assert 0 < printed <= 640 and swallowed > 0
    assert printed + swallowed == 100 * line + len("printed 100 lines\n")
    m = ns["ConsoleQuota"](quota=10, slow_after=5)
    assert m.kinds == {"hypercall"} and m.hypercalls == {Hc.CONSOLE_WRITE}
    m.written, m.swallowed = 3, 4
    state = m.save()
    m2 = ns["ConsoleQuota"](quota=10, slow_after=5)
    m2.restore(state)
    assert (m2.written, m2.swallowed) == (3, 4)
