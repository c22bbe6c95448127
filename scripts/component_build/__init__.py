"""The Greengrass component build behind ``scripts/build_component.py`` (``make build``), one concern a module.

- ``errors``: ``BuildError``, the one way a step says the build cannot go on.
- ``rules``: what gdk and Greengrass accept (gdk-config.json, the recipe), checked; nothing written.
- ``wheelhouse``: ``wheels/``, the project's wheel and its dependencies' for every target architecture.
- ``gdk_layout``: ``zip-build/`` and ``greengrass-build/`` exactly as ``gdk component build`` lays them out.

Steps run in that order (rules, wheelhouse, gdk layout); each works on the project directory it is given.
"""
