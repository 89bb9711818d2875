"""Exceptions the engine raises for bad input.

Every message names what was wrong and how to fix it. They subclass ``ValueError`` so callers that
only care about "bad input" can catch that.
"""

from __future__ import annotations


class EngineError(ValueError):
    """Base class: bad input to an engine function."""


class CheckpointError(EngineError):
    """A file that is not a loadable agent checkpoint of a supported architecture."""


class UnknownEnvironmentError(EngineError):
    """An environment id that gymnasium / ale-py does not know."""


class MissingDependencyError(EngineError):
    """An optional package that a feature needs is not installed; the message says what to ``pip install``."""


class NoDeltaForm(EngineError):
    """An agent whose configuration has no delta form (``delta_network()``, engine.core.policy.DeltaPolicy): the
    message says why, and ``precision="fast"`` runs the exact path on it with one log line saying so."""
