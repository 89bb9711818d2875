"""Saliency on the frames: the paper's overlay, a clean overlay, movies, stills and comparison figures.

Overlays are batched tensor programs over all frames (no loop over frames or pixels); only encoding a
movie and drawing its text labels go frame by frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .blur import kernel_radius, gaussian_kernel1d, symmetric_pad
from .preprocessing import CROP_ROWS, as_frames_tensor, byte_scale, resize_uint8
from .storage import atomic_path

ACTOR_CHANNEL, CRITIC_CHANNEL = 2, 0  # blue, red
# The paper's gains ("fudge factors") for its movies: (actor, critic)
PAPER_GAINS = {"pong": (500.0, 600.0), "breakout": (300.0, 600.0), "spaceinvaders": (400.0, 400.0)}
CROP = CROP_ROWS[1] - CROP_ROWS[0]  # 160


def game_name(env_id: str) -> str:
    """``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ``Pong-v4`` -> ``pong``."""
    name = env_id.split("/")[-1].split("-")[0]
    for suffix in ("NoFrameskip", "Deterministic"):
        name = name.replace(suffix, "")
    return name.lower()


def paper_gains(env_id: str) -> tuple[float, float]:
    """The paper's (actor, critic) overlay gains for a game; other games need explicit gains."""
    game = game_name(env_id)
    if game not in PAPER_GAINS:
        raise ValueError(
            f"the paper published overlay gains for {sorted(PAPER_GAINS)} only, not {game!r} ({env_id}): "
            "set render.actor_gain and render.critic_gain (or use render=clean)"
        )
    return PAPER_GAINS[game]


def _check_maps(frames: torch.Tensor, maps, name: str) -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.ndim != 3 or maps.shape[0] != frames.shape[0] or not maps.is_floating_point():
        raise ValueError(
            f"{name} must be floating-point maps (N, H, W) with one map per frame (N={frames.shape[0]}), "
            f"got {tuple(maps.shape)} {maps.dtype}"
        )
    return maps


def _scipy_blur_float32(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` on float32 (N, H, W): each axis in float64, rounded to float32 after
    each axis as scipy does, with its half-sample symmetric border."""
    kernel = gaussian_kernel1d(sigma, device=images.device, dtype=torch.float64).flatten()
    radius = kernel_radius(sigma)
    out = images
    for dim in (1, 2):
        padded = symmetric_pad(out.double()[:, None], radius)[:, 0]
        padded = padded[:, :, radius:-radius] if dim == 1 else padded[:, radius:-radius, :]
        windows = padded.unfold(dim, kernel.numel(), 1)  # (..., K) sliding windows along the axis
        out = (windows * kernel).sum(-1).float()
    return out


def paper_overlay(frames, saliency, channel: int, gain: float, blur_sigma: float = 0.0) -> torch.Tensor:
    """Section 6 of the spec, batched: add a saliency map to one colour channel of the raw frames.

    Args:
        frames: uint8 (N, 210, 160, 3). saliency: float (N, 80, 80). channel: 0 red, 1 green, 2 blue.
        gain: the "fudge factor". blur_sigma: optional blur of the 160x160 map.

    Returns:
        uint8 (N, 210, 160, 3) on the saliency's device. As the original: per frame, the map is byte-scaled,
        Pillow-bilinear resized to 160x160 (float32), optionally blurred, shifted to min 0, scaled to
        ``gain * max(map) * S / max(S)``, truncated to integers and added to rows 35..194 of the channel in
        uint16 arithmetic, then clipped to 1..255. Edge cases: an all-constant map adds nothing (the original
        divides 0 by 0); sums past 65535 wrap around as the original's uint16 arithmetic does on x86.
    """
    saliency = _check_maps(as_frames_tensor(frames), saliency, "saliency")
    frames = as_frames_tensor(frames, saliency.device)
    if tuple(saliency.shape[1:]) != (80, 80):
        raise ValueError(f"saliency maps must be (N, 80, 80), got {tuple(saliency.shape)}")
    if channel not in (0, 1, 2):
        raise ValueError(f"channel must be 0 (red), 1 (green) or 2 (blue), got {channel!r}")
    if blur_sigma < 0:
        raise ValueError(f"blur_sigma must be >= 0, got {blur_sigma}")
    maps = saliency.float()
    pmax = maps.amax(dim=(1, 2), keepdim=True)
    s = resize_uint8(byte_scale(maps), (CROP, CROP)).float()
    if blur_sigma > 0:
        s = _scipy_blur_float32(s, blur_sigma)
    s = s - s.amin(dim=(1, 2), keepdim=True)
    smax = s.amax(dim=(1, 2), keepdim=True)
    scaled = (torch.tensor(float(gain), dtype=torch.float32, device=s.device) * pmax) * s / smax
    scaled = torch.where(smax > 0, scaled, torch.zeros_like(scaled))
    added = torch.remainder(scaled.to(torch.int64), 65536)  # float -> uint16 as the original (truncate, wrap)
    out = frames.to(torch.int64)
    band = out[:, CROP_ROWS[0]:CROP_ROWS[1], :, channel]
    out[:, CROP_ROWS[0]:CROP_ROWS[1], :, channel] = torch.remainder(band + added, 65536)
    return out.clamp_(1, 255).to(torch.uint8)


def paper_overlay_pair(frames, actor, critic, actor_gain: float, critic_gain: float, blur_sigma: float = 0.0) -> torch.Tensor:
    """The paper's movie frames: the actor map in blue, then the critic map in red."""
    with_actor = paper_overlay(frames, actor, ACTOR_CHANNEL, actor_gain, blur_sigma)
    return paper_overlay(with_actor, critic, CRITIC_CHANNEL, critic_gain, blur_sigma)


def movie_scales(maps, percentile: float = 99.5) -> float:
    """One normalisation for a whole movie: the ``percentile`` of all its saliency values (1 if that is 0)."""
    maps = torch.as_tensor(maps)
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    flat = maps.detach().flatten().float()
    if flat.numel() == 0:
        raise ValueError("no saliency values to normalise")
    k = max(1, int(np.ceil(percentile / 100 * flat.numel())))
    value = float(torch.kthvalue(flat.cpu(), k).values)
    return value if value > 0 else 1.0


def _colormap(name: str, device, steps: int = 256) -> torch.Tensor:
    from matplotlib import colormaps

    return torch.tensor(colormaps[name](np.linspace(0, 1, steps))[:, :3], dtype=torch.float32, device=device)


def clean_overlay(frames, actor, critic, actor_scale: float, critic_scale: float, alpha: float = 0.6) -> torch.Tensor:
    """Actor in blue and critic in red with perceptual sequential colormaps (matplotlib ``Blues``/``Reds``),
    alpha-blended in proportion to saliency / scale (clipped to 1). Use one scale per movie
    (:func:`movie_scales`) so brightness means the same in every frame. Returns uint8 (N, 210, 160, 3)."""
    frames_t = as_frames_tensor(frames)
    actor = _check_maps(frames_t, actor, "actor")
    critic = _check_maps(frames_t, critic, "critic")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not (actor_scale > 0 and critic_scale > 0):
        raise ValueError("actor_scale and critic_scale must be > 0 (see movie_scales)")
    device = actor.device
    out = as_frames_tensor(frames, device).float() / 255
    for maps, scale, cmap in ((actor, actor_scale, "Blues"), (critic, critic_scale, "Reds")):
        up = F.interpolate(maps.float()[:, None], size=(CROP, CROP), mode="bilinear", align_corners=False)[:, 0]
        strength = (up / scale).clamp(0, 1)  # (N, 160, 160)
        colors = _colormap(cmap, device)[(strength * 255).round().long()]  # (N, 160, 160, 3)
        weight = (alpha * strength)[..., None]
        band = out[:, CROP_ROWS[0]:CROP_ROWS[1]]
        out[:, CROP_ROWS[0]:CROP_ROWS[1]] = band * (1 - weight) + colors * weight
    return (out * 255).round().clamp(0, 255).to(torch.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def write_movie(path, frames, fps: int = 8, labels: list[str] | None = None, scale: int = 2, progress: bool = False) -> Path:
    """Encode uint8 frames (N, H, W, 3) as an H.264 mp4 (yuv420p) at ``fps``, each upscaled ``scale`` times
    (nearest) and captioned with its label. Written to a temporary file and renamed when complete."""
    import av

    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"movie frames must be uint8 (N, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
    if labels is not None and len(labels) != frames.shape[0]:
        raise ValueError(f"{len(labels)} labels for {frames.shape[0]} frames")
    if fps < 1 or scale < 1:
        raise ValueError("fps and scale must be >= 1")
    big = frames.cpu().repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2).numpy()
    height, width = big.shape[1] + big.shape[1] % 2, big.shape[2] + big.shape[2] % 2  # H.264 needs even sides
    font = _font(6 * scale)
    path = Path(path)
    tmp = atomic_path(path, ".mp4")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "18"}
            for t in tqdm(range(big.shape[0]), desc="movie", unit="frame", disable=not progress):
                image = Image.new("RGB", (width, height))
                image.paste(Image.fromarray(big[t]))
                if labels is not None:
                    ImageDraw.Draw(image).text((3 * scale, 2 * scale), labels[t], fill=(255, 255, 255), font=font,
                                               stroke_width=max(1, scale // 2), stroke_fill=(0, 0, 0))
                for packet in stream.encode(av.VideoFrame.from_image(image)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_png(path, image) -> Path:
    """Write a uint8 (H, W, 3) image as PNG (atomically)."""
    image = torch.as_tensor(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"a PNG still must be uint8 (H, W, 3), got {tuple(image.shape)} {image.dtype}")
    path = Path(path)
    tmp = atomic_path(path, ".png")
    try:
        Image.fromarray(image.cpu().numpy()).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def comparison_figure(path, frame, jacobian_actor, jacobian_critic, perturbation_actor, perturbation_critic, title: str = "") -> Path:
    """The paper's comparison for one frame: rows actor / critic, columns Jacobian / perturbation saliency,
    each map (normalised to its own max) over the grey 160x160 play area."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    frame = as_frames_tensor(torch.as_tensor(frame)[None])[0].cpu()
    gray = frame[CROP_ROWS[0]:CROP_ROWS[1]].float().mean(-1).numpy()
    panels = [
        ("actor: Jacobian", jacobian_actor, "Blues"), ("actor: perturbation", perturbation_actor, "Blues"),
        ("critic: Jacobian", jacobian_critic, "Reds"), ("critic: perturbation", perturbation_critic, "Reds"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(6.4, 6.8), dpi=100)
    for ax, (name, maps, cmap) in zip(axes.flat, panels):
        maps = torch.as_tensor(maps).detach().float().cpu()
        if maps.shape != (80, 80):
            raise ValueError(f"{name} map must be (80, 80), got {tuple(maps.shape)}")
        up = F.interpolate(maps[None, None], size=(CROP, CROP), mode="bilinear", align_corners=False)[0, 0]
        up = (up / up.max()).numpy() if float(up.max()) > 0 else up.numpy()
        ax.imshow(gray, cmap="gray")
        ax.imshow(up, cmap=cmap, alpha=np.clip(up, 0, 1) * 0.85, vmin=0, vmax=1)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = atomic_path(path, ".png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path
