"""TCP recovery between guests: one chosen segment lost (the only data segment of a reply,
the server's FIN, its SYN-ACK) is resent within the retransmission timeout, and bulk
transfers through impaired links (loss, reordering) stay byte-exact, with fast
retransmit, SACK recovery and the out-of-order queue doing the work."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Callable

import pytest

from denali.kernel import Kernel
from denali.net.impair import LinkSpec
from denali.vm import Vm
from tests.conftest import need_image

SYN, FIN, ACK = 0x02, 0x01, 0x10


def tcp_of(frame: bytes) -> tuple[int, int, int, int] | None:
    """(source port, flags, sequence, payload length) of a TCP/IPv4 frame, else None."""
    if frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    ihl = (frame[14] & 15) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    t = 14 + ihl
    sport, seq = struct.unpack_from("!H", frame, t)[0], struct.unpack_from("!I", frame, t + 4)[0]
    off = (frame[t + 12] >> 4) * 4
    return sport, frame[t + 13], seq, total - ihl - off


class DropOnce:
    """A drop predicate: loses the first frame ``match`` accepts, and counts later frames it
    accepts too (the retransmissions)."""

    def __init__(self, match: Callable[[tuple[int, int, int, int]], bool]) -> None:
        self.match = match
        self.dropped: tuple[int, int, int, int] | None = None
        self.again = 0

    def __call__(self, frame: bytes) -> bool:
        t = tcp_of(frame)
        if t is None or not self.match(t):
            return False
        if self.dropped is None:
            self.dropped = t
            return True
        if t[2] == self.dropped[2]:
            self.again += 1
        return False


async def _client(
    k: Kernel, url: str, extra: str = "", ip: str = "10.0.0.2", within: float = 120
) -> tuple[int, str]:
    vm = await k.spawn("httpget", cmdline=f"ip={ip}/24 url={url} {extra}")
    status = await asyncio.wait_for(vm.wait(), within)
    return status, vm.console.text()


def _ms(out: str) -> int:
    m = re.search(r"ms=(\d+)", out)
    assert m, out
    return int(m.group(1))


async def _server(k: Kernel, drop: DropOnce | None = None, link: LinkSpec | None = None) -> Vm:
    need_image("httpd")
    need_image("httpget")
    srv = await k.spawn("httpd", cmdline="ip=10.0.0.1/24", link=link)
    if drop is not None:
        assert srv.nic is not None
        srv.nic.set_link(link, drop_out=drop)
    return srv


@pytest.mark.parametrize("what", ["data", "fin", "synack"])
async def test_one_lost_segment_is_resent_within_the_rto(what: str) -> None:
    matchers: dict[str, Callable[[tuple[int, int, int, int]], bool]] = {
        "data": lambda t: t[0] == 80 and t[3] > 0,  # the reply's only data segment
        "fin": lambda t: t[0] == 80 and bool(t[1] & FIN),  # the server's FIN
        "synack": lambda t: t[0] == 80 and t[1] & (SYN | ACK) == SYN | ACK,
    }
    drop = DropOnce(matchers[what])
    async with Kernel() as k:
        await _server(k, drop)
        # "/" fits one segment; close=1 waits for the server's FIN before it counts a success
        status, out = await _client(k, "http://10.0.0.1/", "count=1 conc=1 close=1")
    assert status == 0 and "ok=1 fail=0" in out, out
    assert drop.dropped is not None, "nothing matched"
    if what != "synack":  # a lost SYN-ACK may be repaired by the client's SYN instead
        assert drop.again >= 1
    # the retransmission timer (or a tail loss probe) fired on its own: the initial RTO
    # is 200 ms (no sample yet for a SYN-ACK), later ones srtt + 4 rttvar, at least 15 ms.
    # Before this stack's timer wake-ups a lost last segment waited for another packet
    # (15 s or forever).
    assert _ms(out) < 1000, out


async def test_bulk_transfer_recovers_with_fast_retransmit_and_sack() -> None:
    async with Kernel() as k:
        srv = await _server(k, link=LinkSpec(loss=0.02, seed=11))
        status, out = await _client(k, "http://10.0.0.1/bytes/2000000", "count=1 conc=1")
        st = await _client(k, "http://10.0.0.1/stats", "count=1 conc=1 print=1", ip="10.0.0.3")
    assert status == 0 and "ok=1 fail=0 bytes=2000000" in out, out
    stats = dict(re.findall(r"^(\w+) (\d+)$", st[1], re.M))
    assert int(stats["tcp_fast_retransmits"]) > 0, stats
    assert int(stats["tcp_sack_recoveries"]) > 0, stats  # the guest client offers SACK
    assert srv.nic is not None and srv.nic.stats.drop_impaired > 0


async def test_reordering_fills_the_out_of_order_queue() -> None:
    async with Kernel() as k:
        await _server(k, link=LinkSpec(delay_s=0.002, reorder=0.2, seed=5, direction="out"))
        status, out = await _client(k, "http://10.0.0.1/bytes/1000000", "count=1 conc=1")
    assert status == 0 and "ok=1 fail=0 bytes=1000000" in out, out
    ooo = int(re.search(r"ooo_segments=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert ooo > 20, out  # kept, not dropped


@pytest.mark.timeout(600)
async def test_ten_megabytes_under_twenty_percent_loss() -> None:
    async with Kernel() as k:
        await _server(k, link=LinkSpec(loss=0.2, seed=3))  # both directions: data and ACKs
        # ~10-20 s on an idle machine; generous bounds for a loaded one
        status, out = await _client(
            k, "http://10.0.0.1/bytes/10000000", "count=1 conc=1 timeout=400", within=450
        )
    assert status == 0 and "ok=1 fail=0 bytes=10000000" in out, out  # every byte checked
