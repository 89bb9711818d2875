"""``resize_uint8`` is Pillow's BILINEAR resize byte for byte (the 2017 preprocessing and the paper's upsampling
depend on its exact bytes), for shrinking and enlarging, square and not, on every device."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.preprocessing import preprocess_bytes, resize_uint8

SIZES = [
    (160, 160, 80, 80),
    (17, 17, 80, 80),
    (9, 9, 80, 80),
    (80, 80, 160, 160),
    (33, 21, 80, 80),
    (160, 160, 79, 81),
    (210, 160, 84, 84),
]


def pillow(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(i).resize((out_w, out_h), Image.BILINEAR)) for i in images])


@pytest.mark.parametrize("h,w,out_h,out_w", SIZES)
def test_equals_pillow_on_random_images(h, w, out_h, out_w, device):
    images = np.random.default_rng(h * w + out_h).integers(0, 256, (4, h, w), dtype=np.uint8)
    got = resize_uint8(torch.from_numpy(images).to(device), (out_h, out_w)).cpu().numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, pillow(images, out_h, out_w))


def test_equals_pillow_on_smooth_and_constant_images():
    ramp = np.tile(np.arange(160, dtype=np.uint8), (160, 1))
    images = np.stack([ramp, ramp.T, np.full((160, 160), 255, np.uint8), np.zeros((160, 160), np.uint8)])
    np.testing.assert_array_equal(resize_uint8(torch.from_numpy(images), (80, 80)).numpy(), pillow(images, 80, 80))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the same bytes on a GPU as on the CPU")
def test_preprocessing_bytes_equal_on_cuda():
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 210, 160, 3), dtype=np.uint8))
    assert torch.equal(preprocess_bytes(frames.cuda()).cpu(), preprocess_bytes(frames))


def test_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        resize_uint8(torch.zeros(1, 8, 8), (4, 4))
