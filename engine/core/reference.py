"""The loop reference: a plain, obviously-correct implementation of the spec, one forward pass per perturbation.

numpy, scipy and Pillow do the image work exactly as the 2017 code did (per-center mask built in the loop,
``scipy.ndimage.gaussian_filter``, Pillow resizes); the agent runs on one perturbed frame at a time. It exists
to check the batched engine value for value and as the benchmark's baseline. It is deliberately slow: do not
use it for real work. Unlike the original it takes the actor and critic scores from the same forward pass
(the original ran two passes), so the benchmark's speed-up over it is conservative.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from .policy import ActorCritic


def byte_scale_np(a: np.ndarray) -> np.ndarray:
    """``floor((a - min) * 255 / (max - min) + 0.5)`` clipped to uint8; a constant array uses a span of 1."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = a.min(), a.max()
    span = hi - lo if hi != lo else 1.0
    return np.clip(np.floor((a - lo) * 255 / span + 0.5), 0, 255).astype(np.uint8)


def pil_resize(image_u8: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow BILINEAR resize of a uint8 image."""
    return np.asarray(Image.fromarray(image_u8).resize((width, height), Image.BILINEAR))


def preprocess_np(frame: np.ndarray) -> np.ndarray:
    """One raw frame (210, 160, 3) uint8 -> (80, 80) float32 in [0, 1], spec section 1."""
    gray = frame[35:195].mean(2)
    return pil_resize(byte_scale_np(gray), 80, 80).astype(np.float32) / 255


def mask_np(center: tuple[int, int], radius: float) -> np.ndarray:
    """The mask of spec section 3 for one center: a 5-pixel plus blurred with sigma=radius, max 1."""
    y, x = np.ogrid[-center[0]:80 - center[0], -center[1]:80 - center[1]]
    mask = np.zeros((80, 80))
    mask[x * x + y * y <= 1] = 1
    mask = gaussian_filter(mask, sigma=radius)
    return mask / mask.max()


def perturb_np(image: np.ndarray, mask: np.ndarray, interp: str, blur_sigma: float) -> np.ndarray:
    """Spec section 4, in float64."""
    image = image.astype(np.float64)
    blurred = gaussian_filter(image, sigma=blur_sigma)
    if interp == "occlude":
        return image * (1 - mask) + blurred * mask
    if interp == "searchlight":
        return image * mask + blurred * (1 - mask)
    raise ValueError(f"unknown interp {interp!r}")


def _forward(agent: ActorCritic, image: np.ndarray, state: tuple) -> tuple[np.ndarray, np.ndarray]:
    p = agent.actor_linear.weight
    x = torch.as_tensor(image, dtype=p.dtype, device=p.device).reshape(1, 1, 80, 80)
    with torch.no_grad():
        out = agent(x, state, batch_invariant=False)  # a true one-input pass, as the original ran
    return out.logits[0].double().cpu().numpy(), out.value.double().cpu().numpy()


def score_frame_np(
    agent: ActorCritic,
    frame: np.ndarray,
    state: tuple,
    radius: float = 5,
    density: int = 5,
    interp: str = "occlude",
    blur_sigma: float = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Actor and critic score grids (G, G) of one frame, one forward pass per mask center (spec, section 5).

    ``state`` is the tuple of (1, hidden) tensors the agent used on the frame.
    """
    image = frame if frame.dtype != np.uint8 else preprocess_np(frame)
    logits, value = _forward(agent, image, state)
    centers = range(0, 80, density)
    actor = np.zeros((len(centers), len(centers)))
    critic = np.zeros((len(centers), len(centers)))
    for a, i in enumerate(centers):
        for b, j in enumerate(centers):
            perturbed = perturb_np(image, mask_np((i, j), radius), interp, blur_sigma)
            l_logits, l_value = _forward(agent, perturbed, state)
            actor[a, b] = 0.5 * np.sum((logits - l_logits) ** 2)
            critic[a, b] = 0.5 * np.sum((value - l_value) ** 2)
    return actor, critic


def upsample_paper_np(scores: np.ndarray, density: int) -> np.ndarray:
    """Spec section 6: grid in an array of side int(80/d)+1, byte-scaled, Pillow-resized, rescaled to pmax."""
    grid = np.zeros((int(80 / density) + 1,) * 2)
    grid[: scores.shape[0], : scores.shape[1]] = scores
    pmax = grid.max()
    up = pil_resize(byte_scale_np(grid), 80, 80).astype(np.float32)
    return pmax * up / up.max()


def upsample_exact_np(scores: np.ndarray, density: int) -> np.ndarray:
    """Bilinear interpolation of the grid with node (a, b) at pixel (a*d, b*d), clamped past the last node."""
    from scipy.interpolate import RegularGridInterpolator

    nodes = np.arange(0, 80, density, dtype=np.float64)
    interp = RegularGridInterpolator((nodes, nodes), scores, method="linear")
    pixels = np.minimum(np.arange(80, dtype=np.float64), nodes[-1])
    yy, xx = np.meshgrid(pixels, pixels, indexing="ij")
    return interp(np.stack([yy, xx], axis=-1))


def saliency_np(agent, frame, state, radius=5, density=5, interp="occlude", blur_sigma=3, compat="exact") -> dict:
    """Maps and score grids of one frame, as numpy arrays: keys actor, critic, actor_scores, critic_scores."""
    actor, critic = score_frame_np(agent, frame, state, radius, density, interp, blur_sigma)
    upsample = upsample_paper_np if compat == "paper" else upsample_exact_np
    return dict(
        actor=upsample(actor, density),
        critic=upsample(critic, density),
        actor_scores=actor,
        critic_scores=critic,
    )
