"""Writing a paper experiment's result: a Markdown table and a PNG plot under docs/figures/.

Each experiment benchmark calls ``write_figure`` once with its measured series; the
table goes to ``docs/figures/NAME.md`` (with the command that produced it) and is
printed, and the plot to ``docs/figures/NAME.png`` (matplotlib, Agg backend: no screen).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT

FIGURES = ROOT / "docs" / "figures"


@dataclass
class Series:
    """One line of a plot: y values over the shared x values (None: not measured)."""

    label: str
    y: Sequence[float | None]
    style: str = "o-"


@dataclass
class Figure:
    name: str
    """File stem under docs/figures/ (``NAME.md``, ``NAME.png``)."""
    title: str
    xlabel: str
    ylabel: str
    x: Sequence[float]
    series: list[Series]
    logx: bool = False
    logy: bool = False
    notes: list[str] = field(default_factory=list)
    """Lines printed under the table (paper's figure, machine, caveats)."""
    fmt: str = "{:,.1f}"
    """How y values are written in the table."""
    ylim_zero: bool = True
    marks: list[tuple[float, str]] = field(default_factory=list)
    """Vertical lines at x, labelled (e.g. where the working set leaves memory)."""


def _cell(fmt: str, v: float | None) -> str:
    return "-" if v is None else fmt.format(v)


def write_figure(fig: Figure, directory: Path = FIGURES) -> tuple[Path, Path]:
    """Write ``NAME.md`` and ``NAME.png``; print the table; return both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    head = [fig.xlabel, *(s.label for s in fig.series)]
    rows = [[f"{x:,g}", *(_cell(fig.fmt, s.y[i]) for s in fig.series)] for i, x in enumerate(fig.x)]
    cmd = "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]])
    lines = [
        f"# {fig.title}",
        "",
        f"Produced by `{cmd}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if fig.notes:
        lines += ["", *fig.notes]
    lines += ["", f"![{fig.title}]({fig.name}.png)", ""]
    md = directory / f"{fig.name}.md"
    md.write_text("\n".join(lines))
    print("\n".join(lines))

    f, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for s in fig.series:
        pts = [(x, y) for x, y in zip(fig.x, s.y, strict=True) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], s.style, label=s.label)
    for x, label in fig.marks:
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            label,
            (x, 0.97),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="dimgrey",
        )
    ax.set_title(fig.title, fontsize=10)
    ax.set_xlabel(fig.xlabel)
    ax.set_ylabel(fig.ylabel)
    if fig.logx:
        ax.set_xscale("log")
    if fig.logy:
        ax.set_yscale("log")
    elif fig.ylim_zero:
        ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if len(fig.series) > 1:
        ax.legend(fontsize=8)
    f.tight_layout()
    png = directory / f"{fig.name}.png"
    f.savefig(png)
    plt.close(f)
    return md, png
