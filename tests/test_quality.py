"""The code stays typed (mypy --strict) and lint-clean (ruff), as pyproject.toml says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "denali"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "denali", "tests", "tools"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format() -> None:
    """The code is laid out by ``ruff format`` (run it before committing)."""
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "denali", "tests", "tools"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_loggers_are_named_after_their_modules_and_only_the_cli_configures_logging() -> None:
    for path in sorted((ROOT / "denali").rglob("*.py")):
        text = path.read_text()
        cli = "cli" in path.relative_to(ROOT).parts
        for m in re.finditer(r"getLogger\(([^)]*)\)", text):
            assert m.group(1) == "__name__" or (cli and m.group(1) == ""), f"{path}: getLogger({m.group(1)})"
        if cli:  # the CLI configures the root logger
            continue
        for configures in ("basicConfig", "addHandler", ".setLevel(", "logging.config", "dictConfig"):
            assert configures not in text, f"{path} configures logging ({configures})"
