"""A frame's outputs must not depend on what else is in its batch: the basis of chunk-invariant maps."""

import pytest
import torch

from engine.core.batching import chunk_bounds, pad_rows, padded_row_count
from engine.core.blur import gaussian_blur
from engine.policies.greydanus2017 import ActorCritic


def test_padded_row_count():
    assert [padded_row_count(n) for n in (1, 15, 16, 17, 24, 25)] == [16, 16, 16, 24, 24, 32]
    t = torch.arange(3.0)[:, None]
    assert torch.equal(pad_rows(t)[:3], t) and pad_rows(t).shape == (16, 1) and pad_rows(t)[3:].abs().sum() == 0


def test_chunk_bounds():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(3, 10) == [(0, 3)]
    with pytest.raises(ValueError, match="chunk size"):
        chunk_bounds(3, 0)


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_forward_is_batch_invariant(core, dtype):
    torch.manual_seed(0)
    agent = ActorCritic(6, core).to(dtype).eval()
    n = 200
    x = torch.rand(n, 1, 80, 80, dtype=dtype)
    state = tuple(torch.randn(n, 256, dtype=dtype) for _ in range(agent.state_size))
    with torch.inference_mode():
        full = agent(x, state)
        for size in (1, 3, 7, 13, 64, 199):
            rows = 24 if size == 1 else n  # one row per batch (padded to 16 rows each): the first 24 rows suffice
            parts = [agent(x[i : i + size], tuple(s[i : i + size] for s in state)) for i in range(0, rows, size)]
            assert torch.equal(torch.cat([p.logits for p in parts]), full.logits[:rows]), size
            assert torch.equal(torch.cat([p.value for p in parts]), full.value[:rows]), size
            for k in range(agent.state_size):
                assert torch.equal(torch.cat([p.state[k] for p in parts]), full.state[k][:rows]), size


def test_blur_is_batch_invariant(dtype):
    x = torch.rand(40, 1, 80, 80, dtype=dtype)
    full = gaussian_blur(x, 3)
    for size in (1, 5, 39):
        assert torch.equal(torch.cat([gaussian_blur(x[i : i + size], 3) for i in range(0, 40, size)]), full)
