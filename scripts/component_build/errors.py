"""The one error of the component build: ``BuildError``, raised wherever the build cannot go on.

Its message says what failed and what to fix; ``scripts/build_component.py`` prints it after "build failed:"
and exits 1. Nothing else is caught: any other exception is a bug in the build.
"""

from __future__ import annotations


class BuildError(Exception):
    """The build cannot go on; the message says what to fix."""
