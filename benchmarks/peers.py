"""The peers a user would pick instead of this engine, driven on the same frames, states and agent.

Both are benchmark-only extras (``pip install captum xaitk-saliency``), never runtime dependencies. Each
makes the same number of forward passes per frame as the engine (one per grid point), in batches of the
same chunk size, with the frame's recurrent state repeated along the batch. How they differ from us:

- xaitk-saliency: ``SlidingRadial`` builds its masks per image (a Python loop: a disk of the radius, blurred
  with ``scipy.ndimage.gaussian_filter``), ``occlude_image_batch`` alpha-blends the blurred frame in numpy,
  and ``SquaredDifferenceScoring`` (the 2017 score, 0.5 * sum of squared logit differences) spreads each score
  over its mask and normalises the map to [0, 1]. The model calls are ours, in torch, per chunk.
- captum: ``Occlusion`` with square windows (side = density, stride = density, so the same 16x16 windows at
  density 5) and the blurred frame as baseline: a hard-edged square instead of a Gaussian spot. Its forward
  function returns our score (0.5 * squared distance of the logits to the unperturbed ones) so the attribution
  is the same quantity; captum expands only top-level tensor arguments, so the state is passed as separate
  tensors. Perturbed batches are built in torch but window by window.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def xaitk_saliency_map(agent, image: np.ndarray, state: tuple, radius: float, density: int, chunk: int) -> np.ndarray:
    """One frame with xaitk-saliency's building blocks. image: (80, 80) float32; state: tuple of (1, hidden)."""
    from xaitk_saliency.impls.gen_classifier_conf_sal.squared_difference_scoring import SquaredDifferenceScoring
    from xaitk_saliency.impls.perturb_image.sliding_radial import SlidingRadial
    from xaitk_saliency.utils.masking import occlude_image_batch

    masks = SlidingRadial(radius=(radius, radius), stride=(density, density), sigma=(radius, radius)).perturb(image)
    perturbed = occlude_image_batch(image, masks, fill=gaussian_filter(image, 3).astype(image.dtype))
    p = agent.actor_linear.weight
    with torch.inference_mode():
        reference = agent(torch.as_tensor(image, dtype=p.dtype)[None, None], state).logits.numpy()
        outputs = []
        for a in range(0, len(perturbed), chunk):
            x = torch.as_tensor(perturbed[a : a + chunk], dtype=p.dtype)[:, None]
            outputs.append(agent(x, tuple(s.expand(x.shape[0], -1) for s in state)).logits.numpy())
    return SquaredDifferenceScoring().generate(reference[0], np.concatenate(outputs), masks)


def captum_saliency_map(agent, image: torch.Tensor, state: tuple, density: int, chunk: int) -> torch.Tensor:
    """One frame with captum's Occlusion. image: (1, 1, 80, 80); state: tuple of (1, hidden)."""
    from captum.attr import Occlusion

    from engine.core.blur import gaussian_blur

    with torch.inference_mode():
        reference = agent(image, state).logits

    def score(x, *state_tensors):
        logits = agent(x, tuple(state_tensors)).logits
        return 0.5 * (logits - reference).pow(2).sum(-1)

    occlusion = Occlusion(score)
    with torch.no_grad():
        return occlusion.attribute(
            image,
            sliding_window_shapes=(1, density, density),
            strides=(1, density, density),
            baselines=gaussian_blur(image, 3),
            additional_forward_args=tuple(state),
            perturbations_per_eval=chunk,
        )
