"""``denali top``: a live table of a kernel's busiest VMs that fits the terminal.

Three separate pieces:

- **where the rows come from**: a ``TopSource`` (``snapshot(limit)`` returns the
  kernel's totals and its ``limit`` busiest VMs, ``denali.metrics.snapshot`` data).
  ``MetricsEndpoint`` reads a kernel's metrics endpoint (``GET /vms.json?top=N``:
  the kernel ranks the VMs by CPU used since the previous request, so a kernel of
  10,000 VMs sends only those rows); ``ApiSocket`` its control API (``GET
  /v1/top?limit=N`` on the Unix socket); another transport is another small class.
- **what the screen shows**: ``render(snap, width, view)``, a pure function of the
  data, the terminal width and the sort order, returning plain lines that are never
  wider than ``width``. Columns are shown in priority order while they fit (at 80
  columns: VM, NAME, STATE, CPU%, TIME, SLICES, HCALLS, IRQS, RX, TX, CONS; wider
  terminals add PREEMPT, IDLES, BATCH, BITS, DROPS), headers are short, and numbers
  carry units (``1.6s``, ``12.3k``, ``12M``) so that no value is ever cut. Only a VM
  name longer than the space left for it is shortened, with a final ``~``.
- **the terminal**: ``run()`` redraws every ``interval`` seconds and reads keys as
  ``top`` users expect: ``P`` sort by CPU%, ``T`` by CPU time, ``N`` by VM id, ``S`` by
  slices, ``H`` by hypercalls, ``<``/``>`` the sort column left/right, ``R`` reverse,
  ``q`` (or Ctrl-C) quit. Without a terminal it prints plain frames (``top -b``).

The sort orders the rows the source sent: with ``?top=N`` those are the N busiest, so
sorting by id shows the busiest N in id order, not the N lowest ids. Guest instructions
are not counted (Unicorn counts them only through a hook on every instruction, which
would slow every guest several times over); CPU time stands in.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

Row = Mapping[str, Any]
"""One VM as ``Kernel.vm_stats`` gives it, plus ``cpu_pct`` from the sampler."""


# ---------------------------------------------------------------- the data source


class TopSource(Protocol):
    """Where ``denali top`` gets its data; ``label`` names it in the title line."""

    @property
    def label(self) -> str: ...

    async def snapshot(self, limit: int) -> dict[str, Any]:
        """``{"kernel": totals, "vms": rows}``, the ``limit`` busiest VMs, busiest first;
        ``OSError`` (or ``TimeoutError``) when the kernel cannot be reached."""
        ...


async def fetch(host: str, port: int, top: int | None = None) -> dict[str, Any]:
    """GET /vms.json (``?top=N``: the N busiest VMs) from a kernel's metrics endpoint."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        query = f"?top={top}" if top is not None else ""
        writer.write(f"GET /vms.json{query} HTTP/1.1\r\nHost: denali\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        status = head.split(b"\r\n")[0].decode(errors="replace")
        raise OSError(f"metrics endpoint answered {status}")
    try:
        result: dict[str, Any] = json.loads(body)
    except ValueError:
        raise OSError("metrics endpoint sent malformed JSON") from None
    return result


class MetricsEndpoint:
    """A kernel's metrics endpoint (``denali boot --metrics HOST:PORT``) as a ``TopSource``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    async def snapshot(self, limit: int) -> dict[str, Any]:
        return await fetch(self.host, self.port, limit)


class ApiSocket:
    """A kernel's control API (``denali boot --api PATH``) as a ``TopSource``:
    ``GET /v1/top?limit=N`` on its Unix socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def label(self) -> str:
        return self.path

    async def snapshot(self, limit: int) -> dict[str, Any]:
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=self.path), timeout=aiohttp.ClientTimeout(total=10)
                ) as s,
                s.get(f"http://denali/v1/top?limit={limit}") as resp,
            ):
                if resp.status != 200:
                    raise OSError(f"control API answered HTTP {resp.status}")
                data: dict[str, Any] = await resp.json()
                return data
        except aiohttp.ClientConnectorError as exc:
            raise OSError(exc.os_error.errno, exc.os_error.strerror or str(exc)) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise OSError(f"control API: {exc}") from None


# ---------------------------------------------------------------- units


def fmt_count(n: int) -> str:
    """A count in at most 5 characters: 9999, 12.3k, 123k, 1.2M, 45.6M, 7.8G."""
    if n < 10_000:
        return str(n)
    for div, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        v = n / div
        if v < 999.5:
            return f"{v:.1f}{unit}" if v < 99.95 else f"{v:.0f}{unit}"
    return f"{n / 1e15:.0f}P"


def fmt_bytes(n: int) -> str:
    """Bytes in at most 5 characters, binary units as top shows memory: 512, 1.5K, 12K, 3.4M."""
    if n < 1024:
        return str(n)
    for shift, unit in ((10, "K"), (20, "M"), (30, "G"), (40, "T")):
        v = n / (1 << shift)
        if v < 999.5:
            return f"{v:.1f}{unit}" if v < 9.95 else f"{v:.0f}{unit}"
    return f"{n / (1 << 50):.0f}P"


def fmt_ns(ns: int) -> str:
    """A duration in at most 6 characters: 0.4ms, 320ms, 1.6s, 59.9s, 12m05s, 3h07m, 12d04h."""
    ms = ns / 1e6
    if ms < 9.95:
        return f"{ms:.1f}ms"
    if ms < 999.5:
        return f"{ms:.0f}ms"
    s = ns / 1e9
    if s < 59.95:
        return f"{s:.1f}s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def fmt_pct(p: float) -> str:
    return f"{p:.1f}" if p < 99.95 else f"{p:.0f}"


# ---------------------------------------------------------------- columns


def _nic(row: Row, key: str) -> int | None:
    nic = row.get("nic")
    return int(nic[key]) if nic and key in nic else None


def _state(row: Row) -> str:
    return "swapped" if row.get("swapped") else str(row.get("state", "?"))


@dataclass(frozen=True)
class Column:
    """One column: its short header, how a row's cell reads, how rows sort by it."""

    key: str
    header: str
    cell: Callable[[Row], str]
    sort: Callable[[Row], Any] | None = None
    """Sort value (None: the column is not a sort key)."""
    left: bool = False
    descending: bool = True
    """Sorted busiest/largest first unless reversed (ids and names go up)."""


def _count(field: str) -> Callable[[Row], str]:
    return lambda r: fmt_count(int(r.get(field) or 0))


def _num(field: str) -> Callable[[Row], Any]:
    return lambda r: r.get(field) or 0


def _nic_cell(key: str) -> Callable[[Row], str]:
    def cell(r: Row) -> str:
        v = _nic(r, key)
        return "-" if v is None else fmt_count(v)

    return cell


COLUMNS: Final[tuple[Column, ...]] = (
    Column("id", "VM", lambda r: str(r["id"]), lambda r: r["id"], descending=False),
    Column(
        "name",
        "NAME",
        lambda r: str(r.get("name") or r.get("image", "?")),
        lambda r: str(r.get("name") or r.get("image", "")),
        left=True,
        descending=False,
    ),
    Column("state", "STATE", _state, _state, left=True, descending=False),
    Column("cpu", "CPU%", lambda r: fmt_pct(float(r.get("cpu_pct") or 0)), _num("cpu_pct")),
    Column("time", "TIME", lambda r: fmt_ns(int(r.get("cpu_ns") or 0)), _num("cpu_ns")),
    Column("slices", "SLICES", _count("slices"), _num("slices")),
    Column("hypercalls", "HCALLS", _count("hypercalls"), _num("hypercalls")),
    Column("irqs", "IRQS", _count("irqs_raised"), _num("irqs_raised")),
    Column("rx", "RX", _nic_cell("rx_frames"), lambda r: _nic(r, "rx_frames") or 0),
    Column("tx", "TX", _nic_cell("tx_frames"), lambda r: _nic(r, "tx_frames") or 0),
    Column("console", "CONS", lambda r: fmt_bytes(int(r.get("console_bytes") or 0)), _num("console_bytes")),
    Column("preemptions", "PREEMPT", _count("preemptions"), _num("preemptions")),
    Column("idles", "IDLES", _count("idles"), _num("idles")),
    Column("batches", "BATCH", _count("irq_batches"), _num("irq_batches")),
    Column("bits", "BITS", _count("irq_bits_delivered"), _num("irq_bits_delivered")),
    Column("drops", "DROPS", _nic_cell("drops"), lambda r: _nic(r, "drops") or 0),
)
"""Every column, in priority order (which is also their order on screen)."""
_BY_KEY: Final = {c.key: c for c in COLUMNS}
SORT_KEYS: Final = {"P": "cpu", "T": "time", "N": "id", "S": "slices", "H": "hypercalls"}
"""Keys that choose a sort column, as in top (P CPU, T time, N id)."""
_NAME_MIN: Final = 8
_NAME_WIDE: Final = 16
_MIN_SHOWN: Final = 4
"""VM, NAME, STATE, CPU%: below these the name gives up width first."""
_GAP: Final = 1


@dataclass(frozen=True)
class View:
    """What the user chose: the sort column, its direction, whether to show key help."""

    sort: str = "cpu"
    reverse: bool = False
    help: bool = True

    def key(self, ch: str, shown: Sequence[str] = ()) -> View | None:
        """The view after key ``ch`` (None: quit). ``shown`` are the column keys on
        screen, which ``<`` and ``>`` move the sort column through."""
        if ch in ("q", "Q", "\x03"):
            return None
        if ch in SORT_KEYS:
            return replace(self, sort=SORT_KEYS[ch], reverse=False)
        if ch == "R":
            return replace(self, reverse=not self.reverse)
        if ch in ("h", "?"):
            return replace(self, help=not self.help)
        if ch in ("<", ">"):
            order = [k for k in (shown or [c.key for c in COLUMNS]) if _BY_KEY[k].sort is not None]
            i = order.index(self.sort) if self.sort in order else 0
            i = max(0, min(len(order) - 1, i + (1 if ch == ">" else -1)))
            return replace(self, sort=order[i], reverse=False)
        return self


def sort_rows(rows: Sequence[Row], view: View) -> list[Row]:
    """Rows in the view's order; ties keep the source's (busiest-first) order."""
    col = _BY_KEY.get(view.sort, _BY_KEY["cpu"])
    assert col.sort is not None
    return sorted(rows, key=col.sort, reverse=col.descending != view.reverse)


@dataclass(frozen=True)
class Screen:
    """A rendered frame: plain lines no wider than the width asked for, the index of the
    column-header line, the columns shown and where the sorted column's header is."""

    lines: list[str]
    header: int
    columns: list[str]
    sort_span: tuple[int, int]


def _flow(parts: Sequence[str], width: int, sep: str = "  ") -> list[str]:
    """Words (whole phrases) joined by ``sep`` into lines of at most ``width`` characters;
    a phrase longer than ``width`` is cut (only ever on absurdly narrow terminals)."""
    lines: list[str] = []
    cur = ""
    for p in parts:
        if cur and len(cur) + len(sep) + len(p) <= width:
            cur += sep + p
        else:
            if cur:
                lines.append(cur)
            cur = p[:width]
    if cur:
        lines.append(cur)
    return lines


def summary(kernel: Mapping[str, Any], label: str = "") -> list[str]:
    """The title phrases: the source, VMs by state, CPU switches, swap, LAN frames."""
    states = [f"{n:,} {s}" for s, n in sorted(kernel.get("vm_states", {}).items())]
    sw = kernel.get("swap", {})
    lan = kernel.get("switch", {})
    parts = [
        f"denali {label}".strip(),
        f"{kernel.get('vms', 0):,} VMs",
        *states,
        f"switches {fmt_count(int(kernel.get('cpu_switches', 0)))}",
        f"swap out/in {fmt_count(int(sw.get('swap_outs', 0)))}/{fmt_count(int(sw.get('swap_ins', 0)))}",
        f"LAN frames {fmt_count(int(lan.get('frames', 0)))}",
    ]
    return parts


def _help(view: View) -> list[str]:
    col = _BY_KEY.get(view.sort, _BY_KEY["cpu"])
    order = "low first" if col.descending == view.reverse else "high first"
    return [
        f"sort {col.header} ({order})",
        "P cpu",
        "T time",
        "N id",
        "S slices",
        "< >",
        "R reverse",
        "q quit",
    ]


def _fit(natural: Mapping[str, int], width: int) -> list[str]:
    """The columns shown: in priority order, up to the first that does not fit. The name
    counts at most ``_NAME_WIDE`` wide here (a longer one is shortened before a column is
    dropped for it); if even that leaves too little, at ``_NAME_MIN``."""
    for name_cap in (_NAME_WIDE, _NAME_MIN):
        shown: list[str] = []
        used = -_GAP
        for c in COLUMNS:
            need = min(natural[c.key], max(name_cap, len(c.header))) if c.key == "name" else natural[c.key]
            if used + _GAP + need > width:
                break
            shown.append(c.key)
            used += _GAP + need
        if len(shown) >= _MIN_SHOWN:
            break
    return shown


def render(
    snap: Mapping[str, Any],
    width: int,
    view: View | None = None,
    *,
    height: int | None = None,
    label: str = "",
) -> Screen:
    """The frame for ``snap`` on a terminal ``width`` columns wide (``height`` rows:
    the rows that fit; None: all of them). Pure: same input, same frame."""
    view = view or View()
    width = max(width, 20)
    rows = sort_rows(list(snap.get("vms", [])), view)
    lines = _flow(summary(snap.get("kernel", {}), label), width)
    if view.help:
        lines += _flow(_help(view), width, sep="  ")
    header_at = len(lines)
    if height is not None:
        rows = rows[: max(0, height - header_at - 1)]
    cells = {c.key: [c.cell(r) for r in rows] for c in COLUMNS}
    natural = {c.key: max([len(c.header), *map(len, cells[c.key])]) for c in COLUMNS}
    shown = _fit(natural, width)
    widths = {k: natural[k] for k in shown}
    if "name" in shown:  # the name takes what is left, up to its natural width
        others = sum(widths[k] for k in shown if k != "name") + _GAP * (len(shown) - 1)
        widths["name"] = max(min(natural["name"], width - others), min(natural["name"], _NAME_MIN))

    def line(values: Mapping[str, str]) -> str:
        out = []
        for k in shown:
            v, w = values[k], widths[k]
            if len(v) > w:
                v = v[: w - 1] + "~"
            out.append(v.ljust(w) if _BY_KEY[k].left else v.rjust(w))
        return (" " * _GAP).join(out).rstrip()

    head = line({k: _BY_KEY[k].header for k in shown})
    start = 0
    span = (0, 0)
    for k in shown:
        if k == view.sort:
            span = (start, start + widths[k])
        start += widths[k] + _GAP
    lines.append(head)
    for i in range(len(rows)):
        lines.append(line({k: cells[k][i] for k in shown}))
    return Screen(lines, header_at, shown, span)


# ---------------------------------------------------------------- the terminal


async def run(
    source: TopSource,
    interval: float = 1.0,
    view: View | None = None,
    *,
    once: bool = False,
    width: int | None = None,
    limit: int = 200,
) -> None:
    """Show ``source`` until ``q``/Ctrl-C (on a terminal) or after one frame (``once``,
    or plain frames every ``interval`` seconds when stdout is not a terminal). Errors
    from the source propagate (``OSError``, ``TimeoutError``)."""
    view = view or View()
    if once or not sys.stdout.isatty():
        batch_view = replace(view, help=False)
        while True:
            snap = await source.snapshot(limit)
            w = width or _env_width()
            sys.stdout.write("\n".join(render(snap, w, batch_view, label=source.label).lines) + "\n")
            sys.stdout.flush()
            if once:
                return
            sys.stdout.write("\n")
            await asyncio.sleep(interval)
    await _run_live(source, interval, view, width, limit)


def _env_width() -> int:
    try:
        return int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
    except (ValueError, OSError):
        return 80


async def _run_live(source: TopSource, interval: float, view: View, width: int | None, limit: int) -> None:
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    keys: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else -1
    saved = termios.tcgetattr(fd) if fd >= 0 else None
    if fd >= 0:
        tty.setcbreak(fd)
        loop.add_reader(fd, lambda: keys.put_nowait(os.read(fd, 32).decode(errors="ignore")))
    snap: dict[str, Any] | None = None
    shown: list[str] = []
    try:
        with Live(console=console, screen=True, auto_refresh=False) as live:
            next_fetch = 0.0
            cur: View | None = view
            while cur is not None:
                if loop.time() >= next_fetch:
                    snap = await source.snapshot(min(limit, max(1, console.size.height)))
                    next_fetch = loop.time() + interval
                assert snap is not None
                w, h = console.size
                screen = render(snap, width or w, cur, height=h, label=source.label)
                shown = screen.columns
                text = Text("\n".join(screen.lines), no_wrap=True, overflow="crop")
                offset = sum(len(ln) + 1 for ln in screen.lines[: screen.header])
                text.stylize("reverse", offset, offset + len(screen.lines[screen.header]))
                text.stylize("bold", offset + screen.sort_span[0], offset + screen.sort_span[1])
                live.update(text, refresh=True)
                try:
                    pressed = await asyncio.wait_for(keys.get(), max(0.0, next_fetch - loop.time()))
                except TimeoutError:
                    continue
                for ch in pressed:
                    if cur is not None:
                        cur = cur.key(ch, shown)
    finally:
        if fd >= 0:
            loop.remove_reader(fd)
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
