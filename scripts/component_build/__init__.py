"""The Greengrass component build behind ``scripts/build_component.py`` (``gdk component build``, ``make build``),
one concern a module.

- ``errors``: ``BuildError``, the one way a step says the build cannot go on.
- ``rules``: what gdk and Greengrass accept (gdk-config.json, the recipe), checked; nothing written.
- ``targets``: the CPython versions and architectures shipped, and the marker-aware check that a wheel set
  is complete for each.
- ``lock``: ``wheels.lock.json``, the exact dependency wheels per target with their hashes; the download.
- ``pip``: pip as a subprocess, its failure a BuildError.
- ``wheelhouse``: ``build/component/wheels/``, the project's wheel and every target's dependency wheels,
  checked.
- ``gdk_layout``: ``greengrass-build/`` as ``gdk component publish`` takes it (recipe, reproducible zip).

Steps run in that order (rules, wheelhouse with lock and targets, gdk layout); each works on the project
directory it is given.
"""
