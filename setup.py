"""Build step: compile the guest images from guestos/ into the package (denali/images/).

``pip install .`` builds them into the wheel; ``pip install -e .`` builds them into the
source tree's denali/images/ (ignored by git). Needs gcc and GNU ld (i386 output).
"""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithGuests(build_py):
    """build_py that also runs ``make -C guestos`` into the package's images/ folder."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            out = ROOT / "denali" / "images"
        else:
            out = Path(self.build_lib).resolve() / "denali" / "images"
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["make", "-C", str(ROOT / "guestos"), "-j2", f"OUT={out}"], check=True)


setup(cmdclass={"build_py": BuildPyWithGuests})
