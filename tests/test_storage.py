import numpy as np
import torch

from engine.storage import load_arrays, save_arrays


def test_round_trip_with_settings(tmp_path):
    maps = torch.rand(3, 80, 80)
    path = save_arrays(tmp_path / "s.npz", dict(actor=maps, actions=np.arange(3)), dict(radius=5, env="Pong-v4"))
    arrays, settings = load_arrays(path)
    assert np.array_equal(arrays["actor"], maps.numpy()) and np.array_equal(arrays["actions"], np.arange(3))
    assert settings == dict(radius=5, env="Pong-v4")
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary left behind


def test_failed_write_leaves_no_file(tmp_path):
    class Unsaveable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    try:
        save_arrays(tmp_path / "s.npz", dict(bad=Unsaveable()), {})
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
