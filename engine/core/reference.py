"""The loop reference: a plain, obviously-correct implementation of the spec (and of its extension to any policy
and observation), one forward pass per perturbation.

numpy, scipy and Pillow do the image work exactly as the 2017 code did (per-center mask built in the loop,
``scipy.ndimage.gaussian_filter``, Pillow resizes); the agent runs on one perturbed frame at a time. It exists
to check the batched engine value for value and as the benchmark's baseline. It is deliberately slow: do not
use it for real work. Unlike the original it takes the actor and critic scores from the same forward pass
(the original ran two passes), so the benchmark's speed-up over it is conservative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from .policy import Policy, PolicyOutput, State


def byte_scale_np(a: np.ndarray) -> np.ndarray:
    """``floor((a - min) * 255 / (max - min) + 0.5)`` clipped to uint8; a constant array uses a span of 1."""
    a = np.asarray(a, dtype=np.float64)
    lo: float = a.min()
    hi: float = a.max()
    span = hi - lo if hi != lo else 1.0
    return np.clip(np.floor((a - lo) * 255 / span + 0.5), 0, 255).astype(np.uint8)


def pil_resize(image_u8: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow BILINEAR resize of a uint8 image."""
    return np.asarray(Image.fromarray(image_u8).resize((width, height), Image.Resampling.BILINEAR))


def preprocess_np(frame: np.ndarray) -> np.ndarray:
    """One raw frame (210, 160, 3) uint8 -> (80, 80) float32 in [0, 1], spec section 1."""
    gray = frame[35:195].mean(2)
    return pil_resize(byte_scale_np(gray), 80, 80).astype(np.float32) / 255


def mask_np(center: tuple[int, int], radius: float, size: tuple[int, int] = (80, 80)) -> np.ndarray:
    """The mask of spec section 3 for one center: a 5-pixel plus blurred with sigma=radius, max 1, of ``size``."""
    h, w = size
    y, x = np.ogrid[-center[0] : h - center[0], -center[1] : w - center[1]]
    mask = np.zeros((h, w))
    mask[x * x + y * y <= 1] = 1
    blurred: np.ndarray = gaussian_filter(mask, sigma=radius)
    peak: float = blurred.max()
    return blurred / peak


def perturb_np(image: np.ndarray, mask: np.ndarray, interp: str, blur_sigma: float) -> np.ndarray:
    """Spec section 4, in float64: an (H, W) image, or each channel of a (C, H, W) one under the same mask."""
    image = image.astype(np.float64)
    if image.ndim == 3:
        return np.stack([perturb_np(plane, mask, interp, blur_sigma) for plane in image])
    blurred: np.ndarray = gaussian_filter(image, sigma=blur_sigma)
    if interp == "occlude":
        perturbed: np.ndarray = image * (1 - mask) + blurred * mask
    elif interp == "searchlight":
        perturbed = image * mask + blurred * (1 - mask)
    else:
        raise ValueError(f"unknown interp {interp!r}")
    return perturbed


def _forward(agent: Policy, image: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(image, dtype=agent.dtype, device=agent.device).reshape(1, *agent.observation_shape)
    with torch.no_grad():  # a true one-input pass, as the original ran, where the policy can skip its row padding
        # the Policy protocol's call has no batch_invariant; accepts_batch_invariant checked that this one does
        call: Callable[..., PolicyOutput] = agent
        out = call(x, state, batch_invariant=False) if accepts_batch_invariant(agent) else agent(x, state)
    return out.logits[0].double().cpu().numpy(), out.value.double().cpu().numpy()


def accepts_batch_invariant(agent: Callable[..., object]) -> bool:
    """Whether the policy's call takes ``batch_invariant=`` (the engine's own policies and adapters do)."""
    import inspect

    call = getattr(agent, "forward", agent)
    try:
        return "batch_invariant" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def observation_np(agent: Policy, frame: np.ndarray) -> np.ndarray:
    """One observation as the agent sees it, float64 in [0, 1] of shape (C, H, W): a raw 2017 frame is
    preprocessed, uint8 bytes are divided by 255, floats are taken as they are."""
    frame = np.asarray(frame)
    if frame.shape == (210, 160, 3) and frame.dtype == np.uint8:
        return preprocess_np(frame)[None].astype(np.float64)
    image = frame / 255 if frame.dtype == np.uint8 else frame.astype(np.float64)
    return image.reshape(agent.observation_shape)


def score_frame_np(
    agent: Policy,
    frame: np.ndarray,
    state: State,
    radius: float = 5,
    density: int = 5,
    interp: str = "occlude",
    blur_sigma: float = 3,
    score: str = "logit_l2",
    action: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Actor and critic score grids (Gh, Gw) of one observation, one forward pass per mask center (spec, section 5).

    ``state`` is the tuple of (1, ...) tensors the agent used on the observation; ``action`` the action it took
    (for ``score="action_logprob"``).
    """
    image = observation_np(agent, frame)
    h, w = image.shape[1:]
    logits, value = _forward(agent, image, state)
    rows, cols = range(0, h, density), range(0, w, density)
    actor = np.zeros((len(rows), len(cols)))
    critic = np.zeros((len(rows), len(cols)))
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            perturbed = perturb_np(image, mask_np((i, j), radius, (h, w)), interp, blur_sigma)
            l_logits, l_value = _forward(agent, perturbed, state)
            if score == "action_logprob":
                actor[a, b] = abs(_log_softmax(logits)[action] - _log_softmax(l_logits)[action])
            else:
                actor[a, b] = 0.5 * np.sum((logits - l_logits) ** 2)
            critic[a, b] = 0.5 * np.sum((value - l_value) ** 2)
    return actor, critic


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    log_probs: np.ndarray = z - np.log(np.exp(z).sum())
    return log_probs


def upsample_paper_np(scores: np.ndarray, density: int) -> np.ndarray:
    """Spec section 6: grid in an array of side int(80/d)+1, byte-scaled, Pillow-resized, rescaled to pmax."""
    grid = np.zeros((int(80 / density) + 1,) * 2)
    grid[: scores.shape[0], : scores.shape[1]] = scores
    pmax: float = grid.max()
    up = pil_resize(byte_scale_np(grid), 80, 80).astype(np.float32)
    upmax: float = up.max()
    return pmax * up / upmax


def upsample_exact_np(scores: np.ndarray, density: int, size: tuple[int, int] = (80, 80)) -> np.ndarray:
    """Bilinear interpolation of the grid with node (a, b) at pixel (a*d, b*d), clamped past the last node."""
    from scipy.interpolate import RegularGridInterpolator

    rows, cols = (np.arange(0, n, density, dtype=np.float64) for n in size)
    interp = RegularGridInterpolator((rows, cols), scores, method="linear")
    yy, xx = np.meshgrid(
        np.minimum(np.arange(size[0], dtype=np.float64), rows[-1]),
        np.minimum(np.arange(size[1], dtype=np.float64), cols[-1]),
        indexing="ij",
    )
    values: np.ndarray = interp(np.stack([yy, xx], axis=-1))
    return values


def saliency_np(
    agent: Policy,
    frame: np.ndarray,
    state: State,
    radius: float = 5,
    density: int = 5,
    interp: str = "occlude",
    blur_sigma: float = 3,
    compat: str = "exact",
    score: str = "logit_l2",
    action: int | None = None,
) -> dict[str, np.ndarray]:
    """Maps and score grids of one observation, as numpy arrays: keys actor, critic, actor_scores, critic_scores."""
    actor, critic = score_frame_np(agent, frame, state, radius, density, interp, blur_sigma, score, action)
    size = cast(tuple[int, int], tuple(agent.observation_shape[1:]))
    if compat == "paper":
        maps = upsample_paper_np(actor, density), upsample_paper_np(critic, density)
    else:
        maps = upsample_exact_np(actor, density, size), upsample_exact_np(critic, density, size)
    return dict(
        actor=maps[0],
        critic=maps[1],
        actor_scores=actor,
        critic_scores=critic,
    )
