"""The guest TCP/IP stack attacked from outside: 50,000 seeded malformed and adversarial
frames (``tests.net.wirefuzz``) from a Linux network namespace through a TAP device at
an httpd VM and a udpecho VM.

Afterwards both VMs are running (no guest fault), answered the pings the generator
paces itself with, and httpd serves curl a normal request; the guests' heap use stays
bounded. The 1,000,000-frame run is ``tools/bench/bench_wirefuzz.py``. Every address
(10.78.0.0/24) lives on the TAP device inside a namespace the test made.
"""

from __future__ import annotations

import json
import os

import pytest

from denali.kernel import Kernel
from denali.vm import VmState
from tests.conftest import need_image
from tests.net.netns import need_tools
from tests.net.wirefuzz import CLASSES, Bed

pytestmark = pytest.mark.net
FRAMES = 50_000
SEED = 20


async def test_fifty_thousand_hostile_frames_through_tap() -> None:
    need_tools("ip", "curl")
    need_image("httpd")
    need_image("udpecho")
    async with Kernel() as k, Bed(k, os.getpid()) as bed:
        http0, udp0 = await bed.figures()
        assert http0 and udp0
        res = await bed.fuzz(FRAMES, SEED, limit=240)
        assert res["sent"] >= FRAMES
        assert set(res["per_class"]) == set(CLASSES) and all(n > 0 for n in res["per_class"].values()), res
        assert res["established"] > 0 and res["arp_answered"] > 0
        assert res["icmp_types"] == 256 and res["tcp_flag_combinations"] >= 1024, res
        for vm in (bed.httpd, bed.udpecho):
            assert vm.fault is None, vm.fault
            assert vm.state not in (VmState.FAULTED, VmState.FAILED, VmState.EXITED), (
                vm.state,
                vm.console.text(),
            )
        # both answered the probes the generator paced itself with, the last one too
        assert res["probes_lost"] <= res["probes"] // 20, res
        rc, body = await bed.curl("/bytes/2258")
        assert rc == 0 and body == bytes(ord("a") + i % 26 for i in range(2258))
        http1, udp1 = await bed.figures()
        why = json.dumps([http0, http1, udp0, udp1, res])
        # bounded: the table holds at most its size, every thread got memory, and what
        # the flood left behind (half-open and abandoned connections, their threads
        # waiting out the idle time) is well within the VM's 16 MiB
        assert http1["tcp_conns"] <= http1["tcp_max_conns"] and http1["thread_failures"] == 0, why
        assert http1["heap_used"] < 8 << 20, why
        assert udp1["heap_used"] - udp0["heap_used"] < 256 << 10, why
        assert udp1["rx_frames"] > udp0["rx_frames"] + FRAMES // 5, why
