"""The control API of a multi-kernel host (``denali.host``): docs/api-http.md, one socket
for all the host's kernels.

Requests about one VM (show, pause, resume, kill, snapshot, migrate) go to the member
that runs it, found by id in the host's table (``Host.vms``); the member's answer comes
back as it was sent, progress lines included. New VMs (spawn, restore, clone) go to the
member a ``"kernel": J`` field names, else to the least-loaded one. Lists, ``/v1/kernel``
and ``/v1/top`` gather every member's answer: VM rows gain ``"kernel": J``, counters are
summed, and ``"kernels"`` lists the members (running, or ``lost``); the VMs of a lost
member are listed in state ``lost``. ``GET /v1/metrics`` is every member's Prometheus
text, each sample labelled ``kernel="J"``, plus the host's own families.
``POST /v1/vms/ID/migrate`` takes ``{"to": "kernel:J"}`` for another kernel of this
host (or any destination a member's API takes); ``GET /v1/host`` is ``Host.stats()``. A
VM migrating in from elsewhere (``GET /v1/migrations/incoming``) is handed to the
least-loaded member: the WebSocket is relayed message by message.

A member that cannot be reached answers 503 ``kernel_unavailable``; a VM lost with its
kernel 409 ``lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any, Final

import aiohttp
from aiohttp import web

from denali import api
from denali.endpoint import Endpoint, Limits
from denali.host import Host, HostError, HostVm, Member
from denali.migration import MAX_MESSAGE, ROUTE

log = logging.getLogger(__name__)

_V: Final = f"/{api.VERSION}"
_SAMPLE: Final = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?(.*)$")


def _sum_into(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add the numbers of ``part`` to ``total``, recursively (other values: the first)."""
    for key, value in part.items():
        if isinstance(value, bool) or value is None or isinstance(value, str | list):
            total.setdefault(key, value)
        elif isinstance(value, int | float):
            have = total.get(key, 0)
            total[key] = (have if isinstance(have, int | float) else 0) + value
        elif isinstance(value, dict):
            sub = total.setdefault(key, {})
            if isinstance(sub, dict):
                _sum_into(sub, value)


def label_samples(text: str, kernel: int) -> dict[str, tuple[list[str], list[str]]]:
    """Prometheus text by family: (HELP/TYPE lines, samples labelled ``kernel="J"``)."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    current: tuple[list[str], list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split(" ", 3)[2]
            current = families.setdefault(name, ([], []))
            if line not in current[0]:
                current[0].append(line)
            continue
        if not line or line.startswith("#") or current is None:
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, rest = m.group(1), m.group(2), m.group(3)
        inner = labels[1:-1] if labels else ""
        joined = f'kernel="{kernel}"' + (f",{inner}" if inner else "")
        current[1].append(f"{name}{{{joined}}}{rest}")
    return families


class HostApi:
    """The handlers of a host's API (see the module docstring)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    # ---- helpers ----
    def _vm(self, request: web.Request) -> tuple[HostVm, Member]:
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise api.ApiError(400, "bad_request", f"VM id must be a number, not {raw!r}")
        hv = self.host.where(int(raw))
        if hv is None or hv.state == "ended":
            raise api.ApiError(404, "no_such_vm", f"no VM {raw} on this host")
        if hv.state in ("lost", "restoring") or hv.member is None:
            raise api.ApiError(409, "lost", f"VM {raw} was lost with its kernel ({hv.state})")
        m = self.host.members[hv.member]
        return hv, m

    def _target(self, body: dict[str, Any]) -> Member:
        """The member a new VM goes to: ``body["kernel"]`` (removed) or the least loaded."""
        want = body.pop("kernel", None)
        if want is None:
            m = self.host.least_loaded()
            if m is None:
                raise api.ApiError(503, "kernel_unavailable", "no kernel of this host is running")
            return m
        if not isinstance(want, int) or isinstance(want, bool):
            raise api.ApiError(400, "bad_field", "'kernel' must be int")
        m = self.host.member(want)
        if m is None or m.state != "running":
            raise api.ApiError(409, "kernel_unavailable", f"kernel {want} is not running")
        return m

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise api.ApiError(400, "bad_json", "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise api.ApiError(400, "bad_json", "the request body must be a JSON object")
        return data

    async def _forward(
        self, request: web.Request, m: Member, body: dict[str, Any] | None = None, raw: bool = True
    ) -> tuple[web.StreamResponse, dict[str, Any] | None]:
        """Send ``request`` (with ``body`` instead of its own when given) to member ``m``
        and relay the answer; also the answer's last JSON object (None if it had none)."""
        data: bytes | None
        if body is not None:
            data = json.dumps(body).encode()
        else:
            data = await request.read() if request.can_read_body and raw else None
        headers = {"Content-Type": "application/json"} if data else {}
        last: dict[str, Any] | None = None
        try:
            async with m.session.request(
                request.method, f"http://denali{request.path_qs}", data=data, headers=headers
            ) as resp:
                if resp.content_type == "application/x-ndjson":
                    out = web.StreamResponse(
                        status=resp.status, headers={"Content-Type": "application/x-ndjson"}
                    )
                    await out.prepare(request)
                    async for line in resp.content:
                        await out.write(line)
                        with contextlib.suppress(ValueError):
                            parsed = json.loads(line)
                            last = parsed if isinstance(parsed, dict) else last
                    await out.write_eof()
                    return out, last
                payload = await resp.read()
                with contextlib.suppress(ValueError):
                    parsed = json.loads(payload)
                    last = parsed if isinstance(parsed, dict) else None
                if last is not None and resp.status < 400 and ("vm" in last or "vms" in last):
                    for row in [last.get("vm"), *last.get("vms", [])]:
                        if isinstance(row, dict):
                            row["kernel"] = m.index  # where it runs, as in the lists
                    payload = json.dumps(last).encode()
                return web.Response(body=payload, status=resp.status, content_type=resp.content_type), (
                    last if resp.status < 400 else None
                )
        except (aiohttp.ClientError, OSError) as exc:
            raise api.ApiError(
                503, "kernel_unavailable", f"kernel {m.index} cannot be reached ({exc})"
            ) from None

    async def _gather(self, path: str) -> list[tuple[Member, dict[str, Any]]]:
        """GET ``path`` from every running member (those that fail are left out)."""
        members = [m for m in self.host.members if m.state == "running"]
        answers = await asyncio.gather(*(m.call("GET", path) for m in members), return_exceptions=True)
        out = []
        for m, a in zip(members, answers, strict=True):
            if isinstance(a, HostError):
                log.info("%s", a)
            elif isinstance(a, BaseException):
                raise a
            elif a[0] == 200:
                out.append((m, a[1]))
        return out

    def _lost_rows(self) -> list[dict[str, Any]]:
        return [
            {"id": v.id, "state": v.state, "kernel": None, "generation": 0, "slices": 0, **v.view}
            for v in sorted(self.host.vms.values(), key=lambda v: v.id)
            if v.state in ("lost", "restoring")
        ]

    def _totals(self, parts: list[tuple[Member, dict[str, Any]]]) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for _, data in parts:
            k = data.get("kernel")
            if isinstance(k, dict):
                _sum_into(total, k)
        total["state"] = "running"
        lost = self._lost_rows()
        if lost:
            states = total.setdefault("vm_states", {})
            for row in lost:
                states[row["state"]] = states.get(row["state"], 0) + 1
            total["vms"] = int(total.get("vms", 0)) + len(lost)
        total["kernels"] = self.host.stats()["kernels"]
        return total

    # ---- handlers ----
    async def list_vms(self, request: web.Request) -> web.Response:
        rows: list[dict[str, Any]] = []
        for m, data in await self._gather(f"{_V}/vms"):
            rows.extend({**r, "kernel": m.index} for r in data.get("vms", []))
        rows.extend(self._lost_rows())
        rows.sort(key=lambda r: int(r.get("id", 0)))
        return web.json_response({"vms": rows})

    async def one_vm(self, request: web.Request) -> web.StreamResponse:
        _, m = self._vm(request)
        return (await self._forward(request, m))[0]

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        hv, m = self._vm(request)
        resp, last = await self._forward(request, m)
        snap = last.get("snapshot") if last else None
        if isinstance(snap, dict) and isinstance(snap.get("path"), str):
            hv.snapshot = snap["path"]  # what restart_lost restores it from
        return resp

    async def migrate(self, request: web.Request) -> web.StreamResponse:
        hv, m = self._vm(request)
        body = await self._json_body(request)
        to = body.get("to")
        if isinstance(to, str) and to.startswith("kernel:"):
            raw = to.partition(":")[2]
            dest = self.host.member(int(raw)) if raw.isdigit() else None
            if dest is None or dest.state != "running":
                raise api.ApiError(409, "kernel_unavailable", f"{to}: no such kernel running on this host")
            if dest.index == m.index:
                raise api.ApiError(409, "bad_state", f"VM {hv.id} runs on kernel {dest.index} already")
            body["to"] = dest.api
        return (await self._forward(request, m, body))[0]

    async def new_vms(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        m = self._target(body)
        return (await self._forward(request, m, body))[0]

    async def kernel_stats(self, request: web.Request) -> web.Response:
        parts = await self._gather(f"{_V}/kernel")
        return web.json_response({"kernel": self._totals(parts)})

    async def top(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", "")
        if raw and not raw.isdigit():
            raise api.ApiError(400, "bad_request", "limit must be a number")
        parts = await self._gather(f"{_V}/top" + (f"?limit={raw}" if raw else ""))
        rows: list[dict[str, Any]] = []
        for m, data in parts:
            rows.extend({**r, "kernel": m.index} for r in data.get("vms", []))
        rows.sort(key=lambda r: -float(r.get("cpu_pct", 0) or 0))
        if raw:
            rows = rows[: int(raw)]
        return web.json_response({"kernel": self._totals(parts), "vms": rows})

    async def host_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"host": self.host.stats()})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(text=await self.exposition(), content_type="text/plain", charset="utf-8")

    async def exposition(self) -> str:
        """Every member's Prometheus text labelled by kernel, merged by family, and the
        host's own families."""
        members = [m for m in self.host.members if m.state == "running"]

        async def text(m: Member) -> str:
            async with asyncio.timeout(30), m.session.get(f"http://denali{_V}/metrics") as resp:
                return await resp.text() if resp.status == 200 else ""

        texts = await asyncio.gather(*(text(m) for m in members), return_exceptions=True)
        merged: dict[str, tuple[list[str], list[str]]] = {}
        for m, t in zip(members, texts, strict=True):
            if not isinstance(t, str):
                continue
            for name, (head, samples) in label_samples(t, m.index).items():
                have = merged.setdefault(name, (head, []))
                have[1].extend(samples)
        lines: list[str] = []
        for head, samples in merged.values():
            lines.extend(head)
            lines.extend(samples)
        st = self.host.stats()
        lines += [
            "# HELP denali_host_kernel_up Whether each kernel of the host runs (0: lost or stopped)",
            "# TYPE denali_host_kernel_up gauge",
            *(
                f'denali_host_kernel_up{{kernel="{k["kernel"]}"}} {int(k["state"] == "running")}'
                for k in st["kernels"]
            ),
            "# HELP denali_host_lost_vms VMs lost with their kernel and not restarted",
            "# TYPE denali_host_lost_vms gauge",
            f"denali_host_lost_vms {len(st['lost_vms'])}",
            "# HELP denali_host_moves_total VMs the host moved between its kernels to balance load",
            "# TYPE denali_host_moves_total counter",
            f"denali_host_moves_total {st['moves']}",
            "# HELP denali_host_restarts_total Lost VMs restored from a snapshot",
            "# TYPE denali_host_restarts_total counter",
            f"denali_host_restarts_total {st['restarts']}",
        ]
        return "\n".join(lines) + "\n"

    async def incoming(self, request: web.Request) -> web.StreamResponse:
        """Relay a VM migrating in to the least-loaded member, message by message."""
        m = self.host.least_loaded()
        if m is None:
            raise api.ApiError(503, "kernel_unavailable", "no kernel of this host is running")
        try:
            peer = await m.session.ws_connect(
                f"http://denali{ROUTE}", max_msg_size=MAX_MESSAGE, heartbeat=None
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise api.ApiError(
                503, "kernel_unavailable", f"kernel {m.index} cannot be reached ({exc})"
            ) from None
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                await dst.send_bytes(msg.data)

        a = asyncio.ensure_future(pump(ws, peer))
        b = asyncio.ensure_future(pump(peer, ws))
        try:
            await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (a, b):
                t.cancel()
            await asyncio.gather(a, b, return_exceptions=True)
            await peer.close()
            await ws.close()
        return ws

    def routes(self) -> list[web.RouteDef]:
        v = _V
        return [
            web.get(f"{v}/vms", self.list_vms),
            web.post(f"{v}/vms", self.new_vms),
            web.get(f"{v}/vms/{{id}}", self.one_vm),
            web.post(f"{v}/vms/{{id}}/pause", self.one_vm),
            web.post(f"{v}/vms/{{id}}/resume", self.one_vm),
            web.post(f"{v}/vms/{{id}}/kill", self.one_vm),
            web.delete(f"{v}/vms/{{id}}", self.one_vm),
            web.post(f"{v}/vms/{{id}}/snapshot", self.snapshot),
            web.post(f"{v}/vms/{{id}}/migrate", self.migrate),
            web.post(f"{v}/snapshots/restore", self.new_vms),
            web.post(f"{v}/snapshots/clone", self.new_vms),
            web.get(f"{v}/migrations/incoming", self.incoming),
            web.get(f"{v}/kernel", self.kernel_stats),
            web.get(f"{v}/top", self.top),
            web.get(f"{v}/metrics", self.prometheus),
            web.get(f"{v}/host", self.host_stats),
        ]


def _until_started(host: Host) -> Any:
    @web.middleware
    async def wait(request: web.Request, handler: Any) -> web.StreamResponse:
        """A request that comes while the kernels start waits for them."""
        await host.started.wait()
        return await handler(request)  # type: ignore[no-any-return]

    return wait


async def serve(host: Host, path: str, *, mode: int = 0o600, limits: Limits | None = None) -> Endpoint:
    """Serve the host's control API on the Unix socket ``path`` (it may be served before
    the kernels have started: requests wait for them); the caller closes it."""
    endpoint = Endpoint(limits, name="api")
    h = HostApi(host)
    endpoint.app.middlewares.append(api.errors_middleware)
    endpoint.app.middlewares.append(_until_started(host))
    endpoint.app.add_routes(h.routes())
    await endpoint.start_unix(path, mode)
    log.info("serving the host's control API on %s", path)
    return endpoint


async def serve_metrics(host: Host, address: str, port: int, *, limits: Limits | None = None) -> Endpoint:
    """Serve ``/metrics`` (every kernel's, labelled) and ``/vms.json`` (``denali top``)
    for the host on TCP ``address:port``; the caller closes it."""
    endpoint = Endpoint(limits, name="metrics")
    h = HostApi(host)
    endpoint.app.middlewares.append(_until_started(host))

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(text=await h.exposition(), content_type="text/plain", charset="utf-8")

    async def vms_json(request: web.Request) -> web.StreamResponse:
        raw = request.query.get("top", "")
        if raw and not raw.isdigit():
            return web.json_response(
                {"error": {"code": "bad_request", "message": "top must be a number"}}, status=400
            )
        parts = await h._gather(f"{_V}/top" + (f"?limit={raw}" if raw else ""))
        rows: list[dict[str, Any]] = []
        for m, data in parts:
            rows.extend({**r, "kernel": m.index} for r in data.get("vms", []))
        rows.sort(key=lambda r: -float(r.get("cpu_pct", 0) or 0))
        return web.json_response({"kernel": h._totals(parts), "vms": rows[: int(raw)] if raw else rows})

    endpoint.app.router.add_get("/metrics", metrics_page)
    endpoint.app.router.add_get("/vms.json", vms_json)
    await endpoint.start_tcp(address, port)
    return endpoint
