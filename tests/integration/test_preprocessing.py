import numpy as np
import pytest
import torch

from engine.core.preprocessing import byte_scale, preprocess_bytes, preprocess_frames, resize_uint8
from engine.core.reference import byte_scale_np, pil_resize, preprocess_np


def test_byte_identical_to_pillow_pipeline_on_real_frames(pong_rollout):
    frames = pong_rollout.frames.numpy()
    expected = np.stack([(preprocess_np(f) * 255).round().astype(np.uint8) for f in frames])
    assert np.array_equal(preprocess_bytes(frames).numpy(), expected)
    # and the float input the agent sees
    floats = preprocess_frames(frames)[:, 0].numpy()
    assert np.array_equal(floats, np.stack([preprocess_np(f) for f in frames]))


def test_byte_identical_on_random_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 210, 160, 3), dtype=np.uint8)
    frames[1] = 7  # a constant frame: span 1
    frames[2, 35:195] = rng.integers(100, 103, (160, 160, 3))  # a narrow range: strong stretch
    expected = np.stack([pil_resize(byte_scale_np(f[35:195].mean(2)), 80, 80) for f in frames])
    assert np.array_equal(preprocess_bytes(torch.from_numpy(frames)).numpy(), expected)


@pytest.mark.parametrize("src,dst", [((160, 160), (80, 80)), ((17, 17), (80, 80)), ((80, 80), (160, 160))])
def test_resize_matches_pillow(src, dst):
    images = np.random.default_rng(1).integers(0, 256, (4, *src), dtype=np.uint8)
    expected = np.stack([pil_resize(i, *dst) for i in images])
    assert np.array_equal(resize_uint8(torch.from_numpy(images), dst).numpy(), expected)


def test_byte_scale_matches_spec_formula():
    a = torch.rand(3, 17, 17, dtype=torch.float64) * 10 - 3
    a[2] = 4.0
    expected = np.stack([byte_scale_np(x) for x in a.numpy()])
    assert np.array_equal(byte_scale(a).numpy(), expected)
    assert byte_scale(a)[0].min() == 0 and byte_scale(a)[0].max() == 255


def test_preprocess_dtype_and_device(dtype, device):
    frames = np.random.default_rng(3).integers(0, 256, (2, 210, 160, 3), dtype=np.uint8)
    out = preprocess_frames(frames, device=device, dtype=dtype)
    assert out.shape == (2, 1, 80, 80) and out.dtype == dtype and out.device.type == device.type
    # the reference's bytes, divided by 255 in the asked precision: not just the right type, the right values
    expected = np.stack([pil_resize(byte_scale_np(f[35:195].mean(2)), 80, 80) for f in frames])
    assert torch.equal(out[:, 0].cpu(), torch.from_numpy(expected).to(dtype) / 255)
    assert 0 <= float(out.min()) < float(out.max()) <= 1


@pytest.mark.parametrize(
    "frames,match",
    [
        (np.zeros((210, 160, 3), np.uint8), "batched"),
        (np.zeros((2, 200, 160, 3), np.uint8), r"\(N, 210, 160, 3\)"),
        (np.zeros((2, 210, 160, 3), np.float32), "uint8"),
        ([[1, 2]], "numpy array or torch tensor"),
    ],
)
def test_bad_frames_are_rejected(frames, match):
    with pytest.raises((ValueError, TypeError), match=match):
        preprocess_frames(frames)
