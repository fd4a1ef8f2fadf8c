"""Build step: compile the guest images, the guest SDK and the preemption hook into the package.

The images go to denali/images/, the SDK (headers, the guestos libraries built for i386,
crt0.o, the linker script: what ``denali cc`` uses) to denali/sdk/include/ and
denali/sdk/lib/. ``pip install .`` builds them into the wheel; ``pip install -e .``
builds them into the source tree (ignored by git). Needs gcc and GNU ld (i386 output).
"""

import os
import subprocess
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithGuests(build_py):
    """build_py that also runs ``make -C guestos`` into the package's images/ and sdk/ folders."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            pkg = ROOT / "denali"
        else:
            pkg = Path(self.build_lib).resolve() / "denali"
        out = pkg / "images"
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["make", "-C", str(ROOT / "guestos"), "-j2", f"OUT={out}", f"SDK_OUT={pkg / 'sdk'}"],
                       check=True)
        # the block hook that preempts slices (denali/_preempt.c says why it is in C)
        suffix = sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-pthread", "-o",
                        str(pkg / f"_preempt{suffix}"), str(ROOT / "denali" / "_preempt.c")], check=True)


setup(cmdclass={"build_py": BuildPyWithGuests})
