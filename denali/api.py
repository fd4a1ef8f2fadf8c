"""The control API: HTTP/1.1 + JSON on a Unix socket (``denali boot --api PATH``).

Every route is in ``ROUTES`` below, one handler each, so a new operation (migration)
is one more handler and one more line there. docs/api-http.md is the reference, with
examples. Served by ``denali.endpoint`` (bounded connections, idle and slow-request
limits, an owner-only socket), so it shares the metrics endpoint's defences.

Answers are JSON. Errors are ``{"error": {"code": ..., "message": ...}}`` with a status:
400 a malformed request (bad JSON, a missing or wrong field), 404 no such VM or route,
405 a method the route does not take, 409 the VM's state does not allow it (not
paused, ended, an id or MAC in use), 413 a body above the limit, 422 a snapshot that
cannot be used (another ABI, truncated, corrupt), 507 the host cannot write a snapshot
(a full disk), 503 the kernel is closing, 500 a bug (logged).

Long operations (snapshot, restore, clone) take ``?progress=1``: the answer is then
``application/x-ndjson``, one ``{"progress": {"done": N, "total": N}}`` line every
quarter second while the work runs, and a last line that is the usual answer or the
usual error object (its status was sent first, as 200).

The paths in snapshot, restore and clone requests are opened by the kernel's process,
with its rights: the socket is owner-only for that reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from denali import metrics
from denali.config import parse_size
from denali.devices.disk import parse_disk_arg
from denali.endpoint import Endpoint, Limits, json_error
from denali.errors import (
    ConfigError,
    DenaliError,
    KernelClosedError,
    MigrationError,
    NetError,
    ResourceError,
    SnapshotFormatError,
    SnapshotWriteError,
    VmStateError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from denali.kernel import Kernel
    from denali.monitor import Monitor
    from denali.vm import Vm

log = logging.getLogger(__name__)

VERSION: Final = "v1"
MAX_SPAWN: Final = 10_000
"""Most VMs one spawn or clone request may start."""


_Work = Callable[[Callable[[int, int], None]], Awaitable[dict[str, Any]]]
MonitorFactory = Callable[[], "Sequence[Monitor]"]
"""Makes the monitor stack of one VM the API starts (nearest the VM first)."""
"""A long operation: ``work(progress)`` -> its answer."""


class ApiError(Exception):
    """An answer other than 200, raised by a handler."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and error code for a library exception."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code
    if isinstance(exc, SnapshotFormatError):
        return 422, "bad_snapshot"
    if isinstance(exc, SnapshotWriteError):
        return 507, "cannot_write"
    if isinstance(exc, VmStateError):
        return 409, "bad_state"
    if isinstance(exc, KernelClosedError):
        return 503, "closing"
    if isinstance(exc, ConfigError | NetError):
        return (409, "conflict") if "in use" in str(exc) else (400, "bad_request")
    if isinstance(exc, ResourceError):
        return 503, "no_resources"
    if isinstance(exc, MigrationError):
        return 502, "migration_failed"
    return 500, "internal"


def vm_view(kernel: Kernel, vm: Vm) -> dict[str, Any]:
    """One VM as the API shows it."""
    row = kernel.vm_stats(vm)
    row.update(
        mac=":".join(f"{b:02x}" for b in vm.mac),
        cmdline=vm.cmdline,
        memory=vm.mem_size,
        generation=vm.generation,
        exit_status=vm.exit_status,
        fault=vm.fault.summary() if vm.fault is not None else None,
        snapshot=vm.origin.path if vm.origin is not None else None,
    )
    return row


class ControlApi:
    """The handlers for one kernel (see the module docstring)."""

    def __init__(self, kernel: Kernel, monitors: MonitorFactory | None = None) -> None:
        """``monitors``: called once for every VM the API starts (spawn, restore, clone),
        giving that VM's monitor stack, so a host's policy binds these VMs too."""
        self.kernel = kernel
        self.sampler = metrics.CpuSampler(kernel)
        self.monitors = monitors

    # ---- helpers ----
    def _vm(self, request: web.Request) -> Vm:
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise ApiError(400, "bad_request", f"VM id must be a number, not {raw!r}")
        vm = self.kernel.vms.get(int(raw))
        if vm is None:
            raise ApiError(404, "no_such_vm", f"no VM {raw} in this kernel")
        return vm

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "bad_json", "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_json", "the request body must be a JSON object")
        return data

    @staticmethod
    def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if name not in body:
            if default is ...:
                raise ApiError(400, "missing_field", f"the request needs {name!r}")
            return default
        value = body[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ApiError(400, "bad_field", f"{name!r} must be {names}")
        return value

    def _count(self, body: dict[str, Any]) -> int:
        count = int(self._field(body, "count", int, 1))
        if not 1 <= count <= MAX_SPAWN:
            raise ApiError(400, "bad_field", f"'count' must be from 1 to {MAX_SPAWN}")
        return count

    @staticmethod
    def _cmdlines(body: dict[str, Any], count: int) -> list[str] | None:
        raw = body.get("cmdline")
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise ApiError(400, "bad_field", "'cmdline' must be str")
        return [expand_cmdline(raw, i) for i in range(1, count + 1)]

    # ---- handlers ----
    async def list_vms(self, request: web.Request) -> web.Response:
        out = []
        for i, vm in enumerate(list(self.kernel.vms.values())):
            out.append(vm_view(self.kernel, vm))
            if i % metrics.CHUNK == metrics.CHUNK - 1:
                await asyncio.sleep(0)
        return web.json_response({"vms": out})

    async def show_vm(self, request: web.Request) -> web.Response:
        return web.json_response({"vm": vm_view(self.kernel, self._vm(request))})

    async def spawn(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        image = self._field(body, "image", str)
        memory = self._field(body, "memory", (str, int), "16M")
        count = self._count(body)
        cmdlines = self._cmdlines(body, count)
        disks = self._field(body, "disks", list, [])
        if not all(isinstance(d, str) for d in disks):
            raise ApiError(400, "bad_field", "'disks' must be a list of str")
        nic = self._field(body, "nic", bool, True)
        size = parse_size(memory)
        vms = []
        for i in range(1, count + 1):
            specs = [parse_disk_arg(d, index=i) for d in disks]
            vm = await self.kernel.spawn(
                image,
                memory=size,
                cmdline=cmdlines[i - 1] if cmdlines else "",
                nic=nic,
                disks=specs,
                monitors=self.monitors() if self.monitors else (),
            )
            vms.append(vm_view(self.kernel, vm))
        return web.json_response({"vms": vms}, status=201)

    async def pause(self, request: web.Request) -> web.Response:
        vm = self._vm(request)
        await vm.pause()
        return web.json_response({"vm": vm_view(self.kernel, vm)})

    async def resume(self, request: web.Request) -> web.Response:
        vm = self._vm(request)
        vm.resume()
        return web.json_response({"vm": vm_view(self.kernel, vm)})

    async def kill(self, request: web.Request) -> web.Response:
        vm = self._vm(request)
        vm.kill()
        try:
            await asyncio.wait_for(vm.wait(), 10)
        except DenaliError:
            pass  # killed: VmKilledError (or the guest's own end just before)
        except TimeoutError:
            raise ApiError(500, "internal", f"VM {vm.id} did not stop within 10 s") from None
        return web.json_response({"vm": vm_view(self.kernel, vm)})

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        vm = self._vm(request)
        path = self._path(await self._body(request))
        return await self._long(request, lambda p: self._do_snapshot(vm, path, p))

    async def _do_snapshot(self, vm: Vm, path: str, progress: Callable[[int, int], None]) -> dict[str, Any]:
        info = await self.kernel.snapshot(vm, path, progress=progress)
        return {
            "snapshot": {
                "path": info.path,
                "vm": vm.id,
                "abi_version": info.abi_version,
                "memory": info.mem_size,
                "stored_pages": info.stored_pages,
                "file_bytes": info.file_bytes,
            }
        }

    async def restore(self, request: web.Request) -> web.StreamResponse:
        path = self._path(await self._body(request))

        async def work(progress: Callable[[int, int], None]) -> dict[str, Any]:
            vm = await self.kernel.restore(
                path, progress=progress, monitors=self.monitors() if self.monitors else ()
            )
            return {"vm": vm_view(self.kernel, vm)}

        return await self._long(request, work)

    async def clone(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        path = self._path(body)
        count = self._count(body)
        cmdlines = self._cmdlines(body, count)

        async def work(progress: Callable[[int, int], None]) -> dict[str, Any]:
            vms = await self.kernel.clone(path, count, cmdlines=cmdlines, monitors=self.monitors)
            progress(count, count)
            return {"vms": [vm_view(self.kernel, vm) for vm in vms]}

        return await self._long(request, work)

    async def migrate(self, request: web.Request) -> web.StreamResponse:
        vm = self._vm(request)
        body = await self._body(request)
        to = str(self._field(body, "to", str))
        if not to or "\0" in to:
            raise ApiError(400, "bad_field", "'to' must name the destination kernel's API socket")
        if not to.startswith(("http://", "https://")) and not to.startswith("/"):
            raise ApiError(400, "bad_field", "'to' must be an absolute socket path or http://HOST:PORT")
        from denali.migration import migrate

        async def work(progress: Callable[[int, int], None]) -> dict[str, Any]:
            info = await migrate(self.kernel, vm, to, progress=progress)
            return {"migration": info.as_dict()}

        return await self._long(request, work)

    async def incoming(self, request: web.Request) -> web.StreamResponse:
        """A VM migrating in: the connection becomes the migration stream (WebSocket)."""
        from denali.migration import MAX_MESSAGE, WsChannel, receive

        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, autoping=True)
        await ws.prepare(request)
        ch = WsChannel(ws)
        try:
            await receive(self.kernel, ch, peer="the control API", monitors=self.monitors)
        finally:
            await ch.close()
        return ws

    async def kernel_stats(self, request: web.Request) -> web.Response:
        data = await metrics.snapshot(self.kernel, limit=0)
        return web.json_response({"kernel": data["kernel"]})

    async def top(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", "")
        if raw and not raw.isdigit():
            raise ApiError(400, "bad_request", "limit must be a number")
        data = await metrics.top(self.kernel, self.sampler, int(raw) if raw else None)
        return web.json_response(data)

    def _path(self, body: dict[str, Any]) -> str:
        path = str(self._field(body, "path", str))
        if not path or "\0" in path:
            raise ApiError(400, "bad_field", "'path' must name a file")
        return os.path.abspath(path)

    async def _long(self, request: web.Request, work: _Work) -> web.StreamResponse:
        """Run ``work(progress)``; with ``?progress=1`` stream progress lines first."""
        state = [0, 0]

        def progress(done: int, total: int) -> None:  # called from worker threads: two stores
            state[0], state[1] = done, total

        if request.query.get("progress") not in ("1", "true"):
            return web.json_response(await work(progress))
        task = asyncio.ensure_future(work(progress))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            await resp.prepare(request)
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if not task.done():
                    await resp.write(_line({"progress": {"done": state[0], "total": state[1]}}))
        except BaseException:
            if not task.done():
                await asyncio.gather(task, return_exceptions=True)  # the work finishes, whoever left
            raise
        exc = task.exception()
        if exc is None:
            await resp.write(_line(task.result()))
        else:
            status, code = status_of(exc)
            if status == 500:
                log.error("API request failed: %r", exc, exc_info=exc)
            await resp.write(_line({"error": {"code": code, "message": str(exc), "status": status}}))
        await resp.write_eof()
        return resp

    # ---- the routing table ----
    def routes(self) -> list[web.RouteDef]:
        v = f"/{VERSION}"
        return [
            web.get(f"{v}/vms", self.list_vms),
            web.post(f"{v}/vms", self.spawn),
            web.get(f"{v}/vms/{{id}}", self.show_vm),
            web.post(f"{v}/vms/{{id}}/pause", self.pause),
            web.post(f"{v}/vms/{{id}}/resume", self.resume),
            web.post(f"{v}/vms/{{id}}/kill", self.kill),
            web.delete(f"{v}/vms/{{id}}", self.kill),
            web.post(f"{v}/vms/{{id}}/snapshot", self.snapshot),
            web.post(f"{v}/snapshots/restore", self.restore),
            web.post(f"{v}/snapshots/clone", self.clone),
            web.post(f"{v}/vms/{{id}}/migrate", self.migrate),
            web.get(f"{v}/migrations/incoming", self.incoming),
            web.get(f"{v}/kernel", self.kernel_stats),
            web.get(f"{v}/top", self.top),
        ]


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes a JSON error with its status (see the module docstring)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = str(exc.reason).lower().replace(" ", "_")
        message = (
            f"no route {request.method} {request.path}" if exc.status == 404 else str(exc.text or exc.reason)
        )
        return json_error(exc.status, code, message)
    except (ApiError, DenaliError) as exc:
        status, code = status_of(exc)
        return json_error(status, code, str(exc))
    except Exception as exc:  # a bug: answered, logged, the server goes on
        log.error("API request %s %s failed: %r", request.method, request.path, exc, exc_info=exc)
        return json_error(500, "internal", f"internal error: {exc!r}")


_IP_FIELD = re.compile(r"\{ip:([^{}]*)\}")


def expand_cmdline(template: str, index: int) -> str:
    """``{i}`` becomes ``index``; ``{ip:BASE}`` the IPv4 address BASE + index (``ApiError``
    400 when BASE is not an address or there is no room)."""
    import ipaddress

    def ip(m: re.Match[str]) -> str:
        try:
            return str(ipaddress.IPv4Address(m.group(1)) + index)
        except ValueError:
            raise ApiError(
                400, "bad_field", f"cmdline: {m.group(0)} is not a base address with room for VM {index}"
            ) from None

    return _IP_FIELD.sub(ip, template.replace("{i}", str(index)))


def routes(endpoint: Endpoint, kernel: Kernel, monitors: MonitorFactory | None = None) -> ControlApi:
    """Add the control API of ``kernel`` to ``endpoint`` (``monitors``: see ``ControlApi``)."""
    api = ControlApi(kernel, monitors)
    endpoint.app.middlewares.append(_errors)
    endpoint.app.add_routes(api.routes())
    return api


async def serve(
    kernel: Kernel,
    path: str,
    *,
    mode: int = 0o600,
    limits: Limits | None = None,
    monitors: MonitorFactory | None = None,
) -> Endpoint:
    """Serve the control API of ``kernel`` on the Unix socket ``path`` (created with
    ``mode``); the caller closes it (``await endpoint.close()``). ``ConfigError`` when the
    socket cannot be made."""
    endpoint = Endpoint(limits, name="api")
    routes(endpoint, kernel, monitors)
    await endpoint.start_unix(path, mode)
    log.info("serving the control API on %s", path)
    return endpoint
