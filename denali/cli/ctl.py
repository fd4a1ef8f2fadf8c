"""``denali ctl``: the command-line client of the control API (``denali boot --api PATH``).

    denali ctl PATH ls | show ID | spawn IMAGE [-n N] [-m SIZE] [-c CMDLINE] [--disk D]...
              | pause ID | resume ID | kill ID | snapshot ID FILE | restore FILE
              | clone FILE [-n N] [-c CMDLINE] | migrate ID --to OTHER_PATH|kernel:J
              | kernel | host  [--json]

Output is one line per VM (``--json``: the API's JSON as it came). Snapshot, restore,
clone and migrate show progress on stderr when they take more than a second (``JobProgress``;
``--progress`` from the start, ``--no-progress`` never).
Exit statuses: 0 done; 1 the API refused or failed (one line: ``denali ctl: MESSAGE
(HTTP STATUS)``) or cannot be reached; 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from denali.cli.common import EXIT_FAILED, EXIT_USAGE

if TYPE_CHECKING:  # imported where used: every `denali` command loads this module
    from denali.progress import JobProgress


class CtlError(Exception):
    """The API answered an error, or could not be reached."""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser] | None = None) -> None:
    """Add the ``ctl`` subcommand to the top-level subparsers."""
    c = sub.add_parser(
        "ctl", help="control a running kernel through its API socket (boot --api)", parents=parents or []
    )
    c.add_argument("socket", metavar="PATH", help="the kernel's --api socket")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer")
    c.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress of snapshot, restore and clone on stderr (default: once one has taken a second)",
    )
    ops = c.add_subparsers(dest="op", required=True, metavar="OPERATION")
    ops.add_parser("ls", help="list the VMs")
    ops.add_parser("kernel", help="the kernel's counters")
    ops.add_parser("host", help="the kernels of a host (boot --kernels N) and their state")
    for name, what in (
        ("show", "show one VM"),
        ("pause", "pause a VM at its next slice boundary"),
        ("resume", "resume a paused VM"),
        ("kill", "stop a VM"),
    ):
        ops.add_parser(name, help=what).add_argument("id", type=int, help="VM id")
    sp = ops.add_parser("spawn", help="start VMs")
    sp.add_argument("image", help="a built-in image name or an ELF path (as the kernel sees it)")
    sp.add_argument("--count", "-n", type=int, default=1)
    sp.add_argument("--memory", "-m", default="16M")
    sp.add_argument("--cmdline", "-c", help="command line; {i} the index, {ip:BASE} BASE + index")
    sp.add_argument("--disk", action="append", default=[], help="as for denali boot (repeatable)")
    sp.add_argument("--kernel", type=int, help="on a host of several kernels: start them on kernel J")
    sn = ops.add_parser("snapshot", help="snapshot a paused VM to FILE")
    sn.add_argument("id", type=int)
    sn.add_argument("file")
    ops.add_parser("restore", help="start the VM saved in FILE").add_argument("file")
    mg = ops.add_parser("migrate", help="move a running VM to another kernel (live migration)")
    mg.add_argument("id", type=int)
    mg.add_argument(
        "--to",
        required=True,
        metavar="OTHER_PATH",
        help="the destination kernel's --api socket (or http://HOST:PORT; kernel:J for "
        "kernel J of this host, with boot --kernels)",
    )
    cl = ops.add_parser("clone", help="start clones of the snapshot FILE")
    cl.add_argument("file")
    cl.add_argument("--count", "-n", type=int, default=1)
    cl.add_argument("--cmdline", "-c", help="each clone's command line; {i} the index, {ip:BASE}")


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None, bool]:
    """(method, path, body, long) for the operation."""
    op = args.op
    if op == "ls":
        return "GET", "/v1/vms", None, False
    if op == "kernel":
        return "GET", "/v1/kernel", None, False
    if op == "host":
        return "GET", "/v1/host", None, False
    if op == "show":
        return "GET", f"/v1/vms/{args.id}", None, False
    if op in ("pause", "resume", "kill"):
        return "POST", f"/v1/vms/{args.id}/{op}", None, False
    if op == "spawn":
        body: dict[str, Any] = {
            "image": args.image,
            "count": args.count,
            "memory": args.memory,
            "disks": args.disk,
        }
        if args.cmdline is not None:
            body["cmdline"] = args.cmdline
        if args.kernel is not None:
            body["kernel"] = args.kernel
        return "POST", "/v1/vms", body, False
    if op == "snapshot":
        return "POST", f"/v1/vms/{args.id}/snapshot", {"path": os.path.abspath(args.file)}, True
    if op == "migrate":
        to = args.to if args.to.startswith(("http://", "https://", "kernel:")) else os.path.abspath(args.to)
        return "POST", f"/v1/vms/{args.id}/migrate", {"to": to}, True
    if op == "restore":
        return "POST", "/v1/snapshots/restore", {"path": os.path.abspath(args.file)}, True
    body = {"path": os.path.abspath(args.file), "count": args.count}
    if args.cmdline is not None:
        body["cmdline"] = args.cmdline
    return "POST", "/v1/snapshots/clone", body, True


async def call(
    socket: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    progress: JobProgress | None = None,
    limit_s: float = 600,
) -> dict[str, Any]:
    """One API request; the JSON answer, or ``CtlError`` with the one line to print. With
    ``progress``, asks for progress lines and feeds them to it."""
    import aiohttp

    conn = aiohttp.UnixConnector(path=socket)
    query = "?progress=1" if progress is not None else ""
    try:
        async with (
            aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=limit_s)) as s,
            s.request(method, f"http://denali{path}{query}", json=body) as resp,
        ):
            if resp.content_type == "application/x-ndjson":
                last: dict[str, Any] = {}
                async for raw in resp.content:
                    last = json.loads(raw)
                    p = last.get("progress")
                    if p is not None and progress is not None:
                        progress.update(int(p["done"]), int(p["total"]))
                if "error" in last:
                    err = last["error"]
                    raise CtlError(f"{err.get('message')} (HTTP {err.get('status')})")
                return last
            try:
                data: dict[str, Any] = await resp.json(content_type=None)
            except ValueError:
                raise CtlError(f"the API answered HTTP {resp.status} without JSON") from None
            if resp.status >= 400:
                err = data.get("error", {}) if isinstance(data, dict) else {}
                raise CtlError(f"{err.get('message', 'error')} (HTTP {resp.status})")
            return data
    except aiohttp.ClientConnectorError as exc:
        raise CtlError(
            f"{socket}: cannot connect ({exc.os_error.strerror or exc}); is a kernel running "
            f"with --api {socket}?"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise CtlError(f"{socket}: {exc}") from None
    except TimeoutError:
        raise CtlError(f"{socket}: no answer within {limit_s:.0f} s") from None


def _vm_line(vm: dict[str, Any]) -> str:
    where = f"kernel={vm['kernel'] if vm['kernel'] is not None else '-'} " if "kernel" in vm else ""
    return (
        f"{vm['id']:>6} {vm.get('image') or '?':<16} {vm['state']:<9} {where}mac={vm.get('mac')} "
        f"gen={vm['generation']} slices={vm['slices']} cmdline={vm.get('cmdline')!r}"
    )


def _print(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
        return
    if "vm" in data:
        print(_vm_line(data["vm"]))
    for vm in data.get("vms", []):
        print(_vm_line(vm))
    if "snapshot" in data:
        s = data["snapshot"]
        print(
            f"snapshot of VM {s['vm']}: {s['path']} ({s['stored_pages']} pages, "
            f"{s['file_bytes']:,} bytes on disk, ABI {s['abi_version']})"
        )
    if "migration" in data:
        m = data["migration"]
        kind = "live" if m["live"] else "stop-and-copy"
        print(
            f"VM {m['vm']} migrated to {m['to']} ({kind}): {m['rounds']} rounds, {m['pages_sent']} pages "
            f"({m['pages_final']} while paused), downtime {m['downtime_ms']:.1f} ms, total "
            f"{m['total_ms']:.1f} ms"
        )
    if "host" in data:
        h = data["host"]
        for m in h["kernels"]:
            print(
                f"kernel {m['kernel']}: {m['state']:<8} pid {m['pid']:<8} {m['vms']} VMs  "
                f"{m['cpu_pct']:.0f}% CPU"
            )
        lost = ", ".join(map(str, h["lost_vms"])) or "none"
        print(f"VMs lost: {lost}; moved by the balancer: {h['moves']}; restarted: {h['restarts']}")
    if "kernel" in data:
        k = data["kernel"]
        states = ", ".join(f"{n} {st}" for st, n in sorted(k["vm_states"].items()))
        print(
            f"{k['vms']} VMs ({states}); {k['cpu_switches']} CPU switches; "
            f"swap out/in {k['swap']['swap_outs']}/{k['swap']['swap_ins']}"
        )
        for m in k.get("kernels", []):  # a host of several kernels (boot --kernels)
            print(f"  kernel {m['kernel']}: {m['state']}, pid {m['pid']}, {m['vms']} VMs")


def run(args: argparse.Namespace) -> int:
    """Run ``denali ctl``."""
    if getattr(args, "count", 1) < 1:
        print("denali: --count must be at least 1 (see 'denali ctl -h')", file=sys.stderr)
        return EXIT_USAGE
    method, path, body, long = _request(args)
    what = f"{args.op} {getattr(args, 'file', '') or getattr(args, 'id', '')}".strip()
    show = long and args.progress is not False
    from denali.progress import JobProgress

    progress = JobProgress(what, 0, sys.stderr, delay=0.0 if args.progress else 1.0) if show else None
    try:
        data = asyncio.run(call(args.socket, method, path, body, progress=progress))
    except CtlError as exc:
        print(f"denali ctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    finally:
        if progress is not None:
            progress.close()
    _print(args, data)
    return 0
