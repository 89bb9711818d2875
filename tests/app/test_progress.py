"""Progress bars: tqdm decides (shown on a terminal, left out of logs and pipes), and the Python API shows none
unless asked."""

import io
import sys

import pytest

from engine import load_agent
from engine.core.saliency import SaliencyConfig, compute_saliency
from engine.env.rollout import rollout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


@pytest.fixture(scope="module")
def agent():
    from engine.policies.registry import resolve_checkpoint

    return load_agent(resolve_checkpoint("builtin/pong"), device="cpu")


@pytest.mark.parametrize(
    "stream,progress,shown",
    [
        (Terminal, None, False),  # the default from Python: no bar
        (Terminal, True, True),
        (Pipe, True, False),  # asked for, but not a terminal: tqdm leaves it out
        (Terminal, False, False),
    ],
)
def test_rollout_bar(agent, monkeypatch, stream, progress, shown):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    kwargs = {} if progress is None else {"progress": progress}
    played = rollout(agent, "Pong-v4", 3, seed=0, **kwargs)
    assert len(played) == 3
    assert ("rollout Pong-v4" in err.getvalue()) is shown, err.getvalue()


@pytest.mark.parametrize("stream,shown", [(Terminal, True), (Pipe, False)])
def test_saliency_bar(agent, monkeypatch, stream, shown):
    played = rollout(agent, "Pong-v4", 2, seed=0)
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    compute_saliency(agent, played.frames, played.states, SaliencyConfig(density=40), progress=True)
    assert ("saliency" in err.getvalue()) is shown
