import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from engine.core.blur import gaussian_blur, symmetric_pad
from engine.core.masks import center_coords, perturb, perturbation_masks
from engine.core.reference import mask_np, perturb_np


@pytest.mark.parametrize("sigma", [0.7, 1, 3, 5, 8, 25])
def test_blur_equals_scipy(sigma):
    x = np.random.default_rng(0).random((3, 80, 80))
    expected = np.stack([gaussian_filter(i, sigma) for i in x])
    got = gaussian_blur(torch.from_numpy(x)[:, None], sigma)[:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)


def test_symmetric_pad_equals_numpy_even_past_the_edge():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    for pad in (1, 3, 9):
        expected = np.pad(x[0, 0].numpy(), pad, mode="symmetric")
        assert np.array_equal(symmetric_pad(x, pad)[0, 0].numpy(), expected)


@pytest.mark.parametrize("radius,density", [(5, 5), (3, 7), (8, 10), (2.5, 80)])
def test_masks_equal_reference(radius, density):
    masks = perturbation_masks(radius, density, dtype=torch.float64)
    centers = center_coords(density).tolist()
    assert masks.shape == (len(centers) ** 2, 80, 80)
    for k in sorted({0, 1, len(centers) + 2, masks.shape[0] // 2 + 3, masks.shape[0] - 1} & set(range(masks.shape[0]))):
        i, j = centers[k // len(centers)], centers[k % len(centers)]
        np.testing.assert_allclose(masks[k].numpy(), mask_np((i, j), radius), rtol=0, atol=1e-13)
        assert masks[k].max() == 1  # the peak sits at the center away from the borders
        if min(i, j, 79 - i, 79 - j) >= 4 * radius:
            assert masks[k, i, j] == 1


def test_masks_are_cached_per_device_and_dtype():
    assert perturbation_masks(5, 5) is perturbation_masks(5, 5)
    double = perturbation_masks(5, 5, dtype=torch.float64)
    assert double.dtype == torch.float64 and double is not perturbation_masks(5, 5)
    # the cached masks of each dtype are the same masks (mask 37: centre (10, 25): row 2, column 5 of the 16 x 16 grid)
    np.testing.assert_allclose(double[37].numpy(), mask_np((10, 25), 5), rtol=0, atol=1e-13)
    np.testing.assert_allclose(perturbation_masks(5, 5)[37].numpy(), mask_np((10, 25), 5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("interp", ["occlude", "searchlight"])
def test_perturb_equals_reference(interp):
    rng = np.random.default_rng(2)
    image = rng.random((80, 80))
    mask = mask_np((20, 35), 5)
    blurred = gaussian_filter(image, 3)
    got = perturb(torch.from_numpy(image), torch.from_numpy(blurred), torch.from_numpy(mask), interp)
    np.testing.assert_allclose(got.numpy(), perturb_np(image, mask, interp, 3), rtol=0, atol=1e-15)


def test_bad_settings():
    with pytest.raises(ValueError, match="density"):
        perturbation_masks(5, 0)
    with pytest.raises(ValueError, match="radius"):
        perturbation_masks(0, 5)
    with pytest.raises(ValueError, match="interp"):
        perturb(torch.zeros(1), torch.zeros(1), torch.zeros(1), "blur")
