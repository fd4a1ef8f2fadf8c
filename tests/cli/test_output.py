"""denali.cli.output: console bytes to a real pipe through the bounded buffer and its thread."""

from __future__ import annotations

import os
import threading
import time

from denali.cli.output import ConsoleOutput


def read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def test_lines_are_prefixed_and_the_last_one_is_finished() -> None:
    r, w = os.pipe()
    out = ConsoleOutput(w)
    a, b = out.sink_for(1), out.sink_for(2)
    a(b"one\ntw")
    b(b"x\n")
    a(b"o\nthree")
    a.finish()
    b.finish()
    out.close()
    os.close(w)
    assert read_all(r) == b"[vm1] one\n[vm2] x\n[vm1] two\n[vm1] three\n"
    assert out.dropped == 0 and out.report() is None
    os.close(r)


def test_a_pipe_nobody_reads_never_blocks_the_writer_and_drops_are_counted() -> None:
    r, w = os.pipe()
    out = ConsoleOutput(w, limit=100_000)
    sink = out.sink_for(None)
    chunk = b"x" * 1000
    t0 = time.monotonic()
    for _ in range(10_000):  # 10 MB into a 64 KiB pipe and a 100 kB buffer
        sink(chunk)
    assert time.monotonic() - t0 < 10  # never waited for the reader (it would wait for ever)
    out.close(idle_s=0.2)
    got = len(read_all_nonblocking(r))
    os.close(w)
    assert 0 <= got + out.dropped - 10_000 * 1000 <= 4096  # one write may have been in flight
    assert 0 < got <= 100_000 + (1 << 20)  # what the pipe and the buffer held
    assert (
        out.report() == f"denali: {out.dropped:,} bytes of console output dropped "
        "(stdout was not read fast enough)"
    )
    os.close(r)


def read_all_nonblocking(fd: int) -> bytes:
    os.set_blocking(fd, False)
    parts = []
    try:
        while chunk := os.read(fd, 1 << 16):
            parts.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(parts)


def test_a_closed_pipe_drops_everything_from_then_on() -> None:
    r, w = os.pipe()
    os.close(r)
    out = ConsoleOutput(w)
    sink = out.sink_for(3)
    sink(b"lost\n")
    out.close()
    sink(b"after close\n")
    os.close(w)
    assert out.broken and out.dropped == len(b"[vm3] lost\n") + len(b"[vm3] after close\n")
    assert out.report() is not None and "stdout was closed" in out.report()  # type: ignore[operator]


def test_a_slow_reader_gets_everything() -> None:
    r, w = os.pipe()
    out = ConsoleOutput(w, limit=1 << 20)
    sink = out.sink_for(None)
    data = bytes(range(256)) * 2000  # 512 kB: more than the pipe holds, less than the limit
    sink(data)
    got = bytearray()
    out_done = []

    def close() -> None:
        out.close(idle_s=5.0)
        os.close(w)
        out_done.append(True)

    t = threading.Thread(target=close)
    t.start()
    while chunk := os.read(r, 4096):
        got += chunk
        time.sleep(0.0005)  # a slow reader, but a reader
    t.join()
    os.close(r)
    assert bytes(got) == data and out.dropped == 0 and out_done
