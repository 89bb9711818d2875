"""The engine's version: the package's (``engine.__version__``), its distribution's (pyproject.toml reads it here)
and the one a store's identity records, so a run from a source tree and an installed run agree."""

VERSION = "0.1.0"
