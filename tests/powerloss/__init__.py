"""Power-loss tests: a FUSE file system that forgets what was never synced (lazyfs.py), the harness (harness.py)."""
