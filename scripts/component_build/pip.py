"""``pip(*args)``: pip of the Python that runs the build, as a subprocess; a failure is a BuildError with its output.

The user's pip configuration (index, proxy, certificates) applies: what the build takes is pinned by the
hashes of wheels.lock.json, not by where pip finds it.
"""

from __future__ import annotations

import subprocess
import sys

from .errors import BuildError


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)  # noqa: S603 - our own arguments
    if result.returncode != 0:
        raise BuildError(f"pip {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
