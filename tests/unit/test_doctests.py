"""The examples in the docstrings of the public functions run as tests (``doctest``), so they stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "engine.core.perturbation",
    "engine.core.occlusion",
    "engine.core.sarfa",
    "engine.core.rise",
    "engine.core.lime",
    "engine.policies.loading",
    "engine.policies.hub",
    "engine.env.rollout",
    "engine.metrics.faithfulness",
    "engine.core.settings",
    "engine.jobs.outputs",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see stdout)"
