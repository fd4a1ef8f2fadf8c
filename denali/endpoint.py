"""The host's HTTP endpoints (the control API, the metrics endpoint) on aiohttp, hardened.

``Endpoint(limits)`` serves its aiohttp ``web.Application`` (``.app``) on one TCP address
(``start_tcp``) or one Unix socket (``start_unix``), nothing else, until ``close()``.
Both endpoints face whoever can reach them, so every connection is bounded:

- **connections**: at most ``max_connections`` at once. A new connection beyond that
  replaces the connection that has been quiet longest among those with no request in
  flight (idle and slow connections cannot crowd out a scrape); when every connection
  has a request in flight, the new one is answered ``503`` and closed.
- **idle time**: a connection with no request in flight that sends nothing for
  ``idle_timeout`` seconds is closed.
- **slow requests**: a request head (request line and headers) must arrive whole within
  ``head_timeout`` seconds of its first byte, or the connection is answered ``408`` and
  closed (slow loris).
- **slow readers**: a connection whose answers the client does not read (its transport
  has paused writing, the buffer above its high-water mark) for ``idle_timeout`` seconds
  is closed, even with a request in flight (requests pipelined by a client that never
  reads would otherwise keep their handlers waiting for ever).
- **malformed or oversized requests**: aiohttp's parser answers ``400`` (a bad request
  line or header, a request line or header longer than ``max_line``, more than
  ``max_headers`` headers) and ``413`` (a body above ``max_body`` bytes).

A Unix socket is created with mode ``0o600`` (owner only) unless told otherwise; the
mode is set before the socket listens, so no one else can ever connect. An existing
socket file nobody listens on is replaced; anything else at the path is refused.

``close()`` stops listening, closes every connection and waits for the request
handlers to end, so a kernel stopped with connections open leaves no task behind.
Counters are in ``stats`` (accepted, refused, evicted, idle_closed, head_timeouts,
write_stalls).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from aiohttp import web

from denali.errors import ConfigError

log = logging.getLogger(__name__)

_HEAD_END: Final = b"\r\n\r\n"


@dataclass(frozen=True)
class Limits:
    """Bounds on an endpoint's connections (see the module docstring)."""

    max_connections: int = 1024
    idle_timeout: float = 30.0
    head_timeout: float = 10.0
    max_line: int = 8190
    max_headers: int = 64
    max_body: int = 64 << 10

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.idle_timeout <= 0 or self.head_timeout <= 0:
            raise ConfigError("endpoint limits must be positive")


class _Guard(asyncio.Protocol):
    """One connection: forwards to aiohttp's protocol and watches its activity."""

    __slots__ = ("busy", "endpoint", "head_since", "inner", "last_rx", "stalled_since", "tail", "transport")

    def __init__(self, endpoint: Endpoint, inner: asyncio.Protocol) -> None:
        self.endpoint = endpoint
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.last_rx = time.monotonic()
        self.head_since: float | None = None
        self.tail = b""
        self.busy = 0
        self.stalled_since: float | None = None
        """When the transport paused writing (the client is not reading), if it has."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.endpoint._guards[transport] = self
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.endpoint._guards.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_rx = now
        if not self.busy:
            if self.head_since is None:
                self.head_since = now
            seen = self.tail + data
            if _HEAD_END in seen:
                self.head_since = None
                self.tail = b""
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.stalled_since = time.monotonic()
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.stalled_since = None
        self.inner.resume_writing()

    def request_done(self) -> None:
        self.busy -= 1
        self.last_rx = time.monotonic()
        self.head_since = None
        self.tail = b""

    def close(self, answer: bytes = b"") -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            if answer:
                with contextlib.suppress(Exception):
                    t.write(answer)
            t.close()

    def abort(self) -> None:
        """Close at once, dropping what is buffered (a client that does not read)."""
        if self.transport is not None:
            self.transport.abort()


class _Refuse(asyncio.Protocol):
    """A connection beyond the limit while every other has a request in flight."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.write(_answer(503, "Service Unavailable", "too many connections"))
        t.close()


def _answer(status: int, reason: str, text: str) -> bytes:
    body = f'{{"error": {{"code": "{reason.lower().replace(" ", "_")}", "message": "{text}"}}}}\n'
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ClientTrouble(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's per-request logger: a malformed request is the client's trouble, logged
    at debug level (at error level, any client could fill the host's logs)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            kwargs.setdefault("stacklevel", 2)
            self.logger.log(logging.DEBUG, msg, *args, **kwargs)


class Endpoint:
    """An aiohttp application (``app``) served on one address with ``Limits`` (see the
    module docstring)."""

    def __init__(self, limits: Limits | None = None, *, name: str = "endpoint") -> None:
        """Add routes to ``app`` (and middlewares after the first), then ``start_*``."""
        self.limits = limits or Limits()
        self.name = name
        self.app = web.Application(client_max_size=self.limits.max_body, middlewares=[self._track])
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            logger=_ClientTrouble(log, {}),
            keepalive_timeout=self.limits.idle_timeout + self.limits.head_timeout + 5,  # ours act first
            max_line_size=self.limits.max_line,
            max_field_size=self.limits.max_line,
            max_headers=self.limits.max_headers,
            lingering_time=1.0,
        )
        self._server: asyncio.Server | None = None
        self._guards: dict[object, _Guard] = {}
        """Open connections by transport."""
        self._sweeper: asyncio.Task[None] | None = None
        self._unix_path: str | None = None
        self.address = ""
        self.stats = {
            "accepted": 0,
            "refused": 0,
            "evicted": 0,
            "idle_closed": 0,
            "head_timeouts": 0,
            "write_stalls": 0,
        }

    @property
    def port(self) -> int:
        """The TCP port listened on (0 for a Unix socket)."""
        if self._server is None or self._unix_path is not None:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._guards)

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = self._guards.get(request.transport)
        if guard is None:
            return await handler(request)
        guard.busy += 1
        try:
            return await handler(request)
        finally:
            guard.request_done()

    def _protocol(self) -> asyncio.Protocol:
        if len(self._guards) >= self.limits.max_connections:
            idle = [g for g in self._guards.values() if not g.busy]
            if not idle:
                self.stats["refused"] += 1
                return _Refuse()
            victim = min(idle, key=lambda g: g.last_rx)
            victim.close()
            self.stats["evicted"] += 1
        server = self._runner.server
        assert server is not None
        self.stats["accepted"] += 1
        return _Guard(self, server())

    async def _setup(self) -> None:
        _check_fd_room(self.limits.max_connections, self.name)
        await self._runner.setup()

    async def start_tcp(self, host: str, port: int) -> None:
        """Listen on ``host:port`` only (``OSError`` when it cannot be bound)."""
        await self._setup()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._protocol, host, port, backlog=256, reuse_address=True
            )
        except BaseException:
            await self._runner.cleanup()
            raise
        self.address = f"{host}:{self.port}"
        self._start_sweeper()

    async def start_unix(self, path: str, mode: int = 0o600) -> None:
        """Listen on the Unix socket ``path``, created with ``mode`` before it listens.
        ``ConfigError`` when something else is at ``path`` or a server already answers there."""
        _clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, mode)  # before listen(): nobody can connect until then
        except OSError as exc:
            sock.close()
            raise ConfigError(f"{path}: cannot create the socket: {exc.strerror}") from None
        await self._setup()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_unix_server(self._protocol, sock=sock, backlog=256)
        except BaseException:
            sock.close()
            _unlink(path)
            await self._runner.cleanup()
            raise
        self._unix_path = path
        self.address = path
        self._start_sweeper()

    def _start_sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep(), name=f"denali-{self.name}-sweep")

    async def _sweep(self) -> None:
        lim = self.limits
        period = max(0.05, min(lim.idle_timeout, lim.head_timeout) / 4)
        answer = _answer(408, "Request Timeout", "the request head did not arrive in time")
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for g in list(self._guards.values()):
                if g.stalled_since is not None and now - g.stalled_since > lim.idle_timeout:
                    self.stats["write_stalls"] += 1
                    g.abort()
                    continue
                if g.busy:
                    continue
                if g.head_since is not None and now - g.head_since > lim.head_timeout:
                    self.stats["head_timeouts"] += 1
                    g.close(answer)
                elif now - g.last_rx > lim.idle_timeout:
                    self.stats["idle_closed"] += 1
                    g.close()

    async def close(self) -> None:
        """Stop listening, close every connection, wait for the handlers; idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for g in list(self._guards.values()):
            g.close()
        await self._runner.cleanup()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        if self._unix_path is not None:
            _unlink(self._unix_path)
            self._unix_path = None


_FD_SPARE: Final = 256
"""Descriptors kept for everything else (swap files, disks, TAP devices, the loop)."""


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files toward ``wanted`` (at most the hard
    limit); the soft limit now. For a program's main (``denali boot``), not a library."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def _check_fd_room(max_connections: int, name: str) -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < max_connections + _FD_SPARE:
        log.warning(
            "%s: the open-file limit (%d) is below its %d connections and %d spare; "
            "connections beyond the limit are refused by the host (raise ulimit -n)",
            name,
            soft,
            max_connections,
            _FD_SPARE,
        )


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file at ``path`` that nobody listens on; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path}: exists and is not a socket (refusing to replace it)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConfigError(f"{path}: {exc.strerror}") from None
        _unlink(path)
        return
    finally:
        probe.close()
    raise ConfigError(f"{path}: another server is listening there")


def json_error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The JSON error answer both endpoints use: ``{"error": {"code", "message"}}``."""
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)
