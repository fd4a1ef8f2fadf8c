"""The framing of the GDB remote serial protocol: packets, checksums, acknowledgements.

A packet is ``$DATA#CS`` with CS the modulo-256 sum of DATA's bytes as two hex digits;
``}`` escapes the next byte (XOR 0x20) and ``*`` run-length encodes in gdb's direction
(never used by it towards a stub without being asked). Outside packets a receiver sees
``+`` and ``-`` (acknowledgements, until no-ack mode) and the byte 0x03 (an interrupt,
Ctrl-C). ``RspConnection`` reads those items from a stream and writes packets back.
"""

from __future__ import annotations

import asyncio
from typing import Final

INTERRUPT: Final = b"\x03"
"""What ``read_item`` returns for a Ctrl-C."""
MAX_PACKET: Final = 0x4000
"""Longest packet accepted from the client (bytes of data); longer ones are refused."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape ``$ # } *`` for a packet body."""
    out = bytearray()
    for b in data:
        if b in b"$#}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def frame(data: bytes) -> bytes:
    """``data`` (already escaped) as a packet on the wire."""
    return b"$" + data + b"#" + f"{checksum(data):02x}".encode()


class RspConnection:
    """One client connection: ``read_item`` gives packets (unescaped) and interrupts,
    ``send`` writes a packet and, until ``no_ack``, waits for nothing (acks are read and
    dropped by ``read_item``; a ``-`` resends the last packet)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.no_ack = False
        self._last = b""

    async def read_item(self) -> bytes | None:
        """The next packet's data, ``INTERRUPT``, or None at end of stream."""
        r = self.reader
        while True:
            c = await r.read(1)
            if not c:
                return None
            if c == b"+":
                continue
            if c == b"-":
                if self._last:
                    self.writer.write(self._last)
                continue
            if c == INTERRUPT:
                return INTERRUPT
            if c != b"$":
                continue  # noise between packets
            body = bytearray()
            while True:
                b = await r.read(1)
                if not b:
                    return None
                if b == b"#":
                    break
                body += b
                if len(body) > MAX_PACKET:
                    body.clear()
                    break
            cs = await r.readexactly(2) if b == b"#" else b""
            try:
                ok = cs != b"" and int(cs, 16) == checksum(bytes(body))
            except ValueError:
                ok = False
            if not self.no_ack:
                self.writer.write(b"+" if ok else b"-")
            if ok:
                return unescape(bytes(body))

    async def send(self, data: bytes) -> None:
        """Send one packet (``data`` raw: escaped here)."""
        pkt = frame(escape(data))
        self._last = pkt
        self.writer.write(pkt)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()
