"""Two source trees of denali side by side on bench_native's points (before and after a change).

Usage: python tools/bench/bench_commits.py A_TREE B_TREE [--rounds 5] [--points switch,ticking,http]

A tree is a checkout with its ``denali/_preempt.so`` and guest images built (``git
worktree add /tmp/before COMMIT``, then in it ``cc -O2 -shared -fPIC -pthread -o
denali/_preempt.so denali/_preempt.c`` and ``make -C guestos OUT=$PWD/denali/images``)
and a ``tools/bench/bench_native.py`` of its own. Every point runs in a fresh process
with that tree first on the path, so each measures that tree's code alone; the trees
alternate A, B, A, B in every round and which goes first alternates too. Printed: the
median of each and the median of the per-round ratios B/A. Points are bench_native's
(native path on): ``clock``, ``switch``, ``http`` (requests/s and loop CPU per
request), ``tcp``, ``ticking`` (1,000 VMs at 10 Hz).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import table

CALLS = {  # the sizes of bench_native's full run
    "clock": "bn.clock(200_000)(True)",
    "switch": "bn.switch(25_000)(True)",
    "http": "bn.http(3_000)(True)",
    "tcp": "bn.tcp(16_000_000)(True)",
    "ticking": "bn.ticking(1_000, 3.0)(True)",
}


def run_point(tree: Path, point: str) -> dict[str, float]:
    """One point in a fresh interpreter running ``tree``'s own bench_native (whose
    ``common`` puts that tree first on the path), checked to import denali from there."""
    bench = tree.resolve() / "tools" / "bench"
    code = (
        f"import sys, json; sys.path.insert(0, {str(bench)!r}); import bench_native as bn; import denali; "
        f"assert denali.__file__.startswith({str(tree.resolve())!r}), denali.__file__; "
        f"print('RESULT ' + json.dumps({CALLS[point]}))"
    )
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=600
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[len("RESULT ") :])
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--points", default="switch,ticking,http")
    args = ap.parse_args()
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    for p in points:
        if p not in CALLS:
            sys.exit(f"bench_commits: unknown point {p!r} (one of {', '.join(CALLS)})")
    got: dict[str, tuple[list[dict[str, float]], list[dict[str, float]]]] = {p: ([], []) for p in points}
    for r in range(args.rounds):
        for p in points:
            order = ((0, args.a), (1, args.b)) if r % 2 == 0 else ((1, args.b), (0, args.a))
            for i, tree in order:
                got[p][i].append(run_point(tree, p))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = [("point", "measure", "A", "B", "B / A (median of rounds)")]
    for p in points:
        av, bv = got[p]
        for key in av[0]:
            a = statistics.median(x[key] for x in av)
            b = statistics.median(x[key] for x in bv)
            ratio = statistics.median(y[key] / x[key] for x, y in zip(av, bv, strict=True))
            rows.append((p, key, f"{a:.3f}", f"{b:.3f}", f"{ratio:.3f}"))
    table(f"A = {args.a}, B = {args.b}, {args.rounds} rounds", rows)


if __name__ == "__main__":
    main()
