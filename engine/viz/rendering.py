"""Saliency on the frames: the paper's overlay, a clean overlay, movies, stills and comparison figures.

Overlays are batched tensor programs over all frames (no loop over frames or pixels; long movies go through
in chunks of :data:`OVERLAY_CHUNK` frames only to bound memory). They run on the device of the saliency maps
and return uint8 ``(N, 210, 160, 3)`` there. Only encoding a movie and drawing its text labels go frame by
frame.

Shapes: frames are raw ALE frames, uint8 ``(N, 210, 160, 3)`` (numpy or torch); saliency maps are float
``(N, H, W)``, one per frame, in the geometry of the agent's observation (spec: any agent, "Overlays"): the 2017
agents' 80x80 maps cover the play area, rows 35..194 of the frame, upsampled to 160x160; any other map (the
standard pipelines' 84x84, a full-frame resize) covers the whole 210x160 frame, resized back to it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from ..core.batching import chunk_bounds
from ..core.blur import gaussian_kernel1d, kernel_radius, symmetric_pad
from ..core.files import atomic_write
from ..core.preprocessing import CROP_ROWS, FRAME_SHAPE, as_frames_tensor, byte_scale, resize_uint8

__all__ = [
    "ACTOR_CHANNEL",
    "CRITIC_CHANNEL",
    "PAPER_GAINS",
    "OVERLAY_CHUNK",
    "game_name",
    "paper_gains",
    "paper_overlay",
    "paper_overlay_pair",
    "movie_scales",
    "streamed_movie_scale",
    "clean_overlay",
    "write_movie",
    "save_png",
    "comparison_figure",
]

ACTOR_CHANNEL, CRITIC_CHANNEL = 2, 0  # blue, red (spec, section 6)
MAP_SIZE = 80
OVERLAY_CHUNK = 256  # frames per batched step; bounds the float intermediates (~1 MB a frame) on long movies
# The paper's overlay gains ("fudge factors") for its movies, (actor, critic), keyed by lower-case game name.
PAPER_GAINS = {"pong": (500.0, 600.0), "breakout": (300.0, 600.0), "spaceinvaders": (400.0, 400.0)}
_UINT16 = 65536
_INT32_LIMIT = 2.0**31


# ----------------------------------------------------------------------------------------------- gains ---


def game_name(env_id: str) -> str:
    """``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ``PongDeterministic-v4``, ``Pong-v4`` -> ``pong``."""
    if not isinstance(env_id, str) or not env_id.strip():
        raise TypeError(f"env_id must be a gymnasium id such as 'Pong-v4', got {env_id!r}")
    name = env_id.strip().split("/")[-1].split("-")[0]
    for suffix in ("NoFrameskip", "Deterministic"):
        name = name.removesuffix(suffix)
    return name.lower()


def paper_gains(env_id: str) -> tuple[float, float]:
    """The paper's ``(actor_gain, critic_gain)`` for ``env_id``'s game; any other game needs explicit gains."""
    game = game_name(env_id)
    if game not in PAPER_GAINS:
        raise ValueError(
            f"the paper published overlay gains only for the games {sorted(PAPER_GAINS)}, not {game!r} "
            f"(from {env_id!r}): pass actor_gain and critic_gain explicitly (set render.actor_gain and "
            "render.critic_gain), or use the clean style, which needs no gains"
        )
    return PAPER_GAINS[game]


# ---------------------------------------------------------------------------------------------- checks ---


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    return x


def map_rows(maps_shape) -> tuple[int, int]:
    """The frame rows ``(top, bottom)`` that maps of shape ``(..., H, W)`` cover: the 2017 crop for 80x80 maps,
    the whole frame for any other (the standard pipelines resize the full frame)."""
    return CROP_ROWS if tuple(maps_shape[-2:]) == (MAP_SIZE, MAP_SIZE) else (0, FRAME_SHAPE[0])


def _check_maps(maps, n: int, name: str) -> torch.Tensor:
    """Float ``(n, H, W)`` maps with finite values, as a detached tensor on their own device."""
    maps = _as_tensor(maps, name).detach()
    if maps.ndim == 2:
        raise ValueError(f"{name} must be batched (N, H, W); got one map {tuple(maps.shape)}: use {name}[None]")
    if maps.ndim != 3 or min(maps.shape[1:]) < 2:
        raise ValueError(f"{name} must be saliency maps (N, H, W), got shape {tuple(maps.shape)}")
    if maps.shape[0] != n:
        raise ValueError(f"{name} must hold one map per frame: {maps.shape[0]} maps for {n} frames")
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {maps.dtype}: convert with .float()")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} holds NaN or infinite values: fix the saliency computation (or nan_to_num it)")
    return maps


def _check_number(value, name: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value}")
    return float(value)


# ------------------------------------------------------------------------------------- paper overlay ---


def _scipy_blur_float32(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` on float32 ``(N, H, W)`` images, byte for byte.

    Same kernel and half-sample symmetric border as :func:`engine.blur.gaussian_blur` (built from its pieces),
    but one axis at a time with the result rounded to float32 in between, as scipy does when filtering a
    float32 array in place of its output. ``gaussian_blur`` on float64 rounds once, at the end, and that differs
    from scipy in ~1 of 10^5 overlay bytes after the scaling and truncation of section 6.
    """
    radius = kernel_radius(sigma)
    kernel = gaussian_kernel1d(sigma, device=images.device, dtype=torch.float64).flatten()
    padded = symmetric_pad(images.double()[:, None], radius)  # (N, 1, H + 2r, W + 2r)
    rows = F.conv2d(padded[..., radius:-radius], kernel.view(1, 1, -1, 1)).float()  # along axis 0: (N, 1, H, W)
    padded = symmetric_pad(rows.double(), radius)[:, :, radius:-radius, :]
    return F.conv2d(padded, kernel.view(1, 1, 1, -1)).float()[:, 0]  # along axis 1, as scipy's second pass


def _to_uint16_like_numpy(values: torch.Tensor) -> torch.Tensor:
    """numpy's ``float.astype('uint16')`` on x86-64, as int64: truncate toward zero through int32, keep the
    low 16 bits (so values wrap modulo 65536); out of the int32 range (|v| >= 2**31) the conversion gives 0."""
    inside = values.abs() < _INT32_LIMIT
    whole = torch.where(inside, values.double().trunc(), torch.zeros((), dtype=torch.float64, device=values.device))
    return torch.remainder(whole.to(torch.int64), _UINT16)


def _paper_overlay_chunk(frames: torch.Tensor, maps: torch.Tensor, channel: int, gain: float, sigma: float):
    """One chunk of :func:`paper_overlay`; returns the frames and whether any uint16 sum wrapped."""
    top, bottom = map_rows(maps.shape)
    pmax = maps.amax(dim=(1, 2), keepdim=True).float()
    s = resize_uint8(byte_scale(maps), (bottom - top, FRAME_SHAPE[1])).float()  # imresize: byte-scale, Pillow bilinear
    if sigma > 0:
        s = _scipy_blur_float32(s, sigma)
    s = s - s.amin(dim=(1, 2), keepdim=True)
    smax = s.amax(dim=(1, 2), keepdim=True)
    # float32 throughout, as numpy computes ``fudge_factor * pmax * S / S.max()`` for a float32 map (a Python
    # gain is rounded to float32 first); numpy 1.x formed ``gain * pmax`` in float64, the same for integer gains.
    scaled = ((torch.tensor(gain, dtype=torch.float32, device=s.device) * pmax) * s) / smax
    scaled = torch.where(smax > 0, scaled, torch.zeros((), dtype=scaled.dtype, device=scaled.device))
    band = frames[:, top:bottom, :, channel].to(torch.int64)
    total = band + _to_uint16_like_numpy(scaled)
    wrapped = bool(((scaled >= _UINT16) | (scaled <= -1) | (total >= _UINT16)).any())  # cast or sum wrapped
    out = frames.clamp(1, 255)
    out[:, top:bottom, :, channel] = torch.remainder(total, _UINT16).clamp_(1, 255).to(torch.uint8)
    return out, wrapped


def paper_overlay(frames, saliency, channel: int, gain: float, blur_sigma: float = 0.0) -> torch.Tensor:
    """Spec section 6, batched: add each frame's saliency map to one colour channel of that frame.

    Args:
        frames: uint8 ``(N, 210, 160, 3)``, numpy or torch.
        saliency: float ``(N, H, W)``, finite; its device is where the work runs (80x80: the 2017 crop; other
            sizes: the whole frame).
        channel: 0 red, 1 green, 2 blue. gain: the paper's "fudge factor" (>= 0).
        blur_sigma: extra Gaussian blur (scipy semantics) of the 160x160 map; 0 for none.

    Returns:
        uint8 ``(N, 210, 160, 3)`` on the maps' device, byte-identical to the original numpy code: per frame
        ``pmax`` = map max; byte-scale the map, Pillow-bilinear resize it to 160x160, to float32, blur if
        ``blur_sigma > 0``, subtract its min, scale to ``gain * pmax * S / S.max()`` in float32, truncate to
        uint16, add to ``channel`` of rows 35..194 in uint16 arithmetic, clip the whole frame to 1..255.

    Edge cases:
        - A constant map (all zero, say) adds nothing: ``S.max() == 0`` and the original's ``0 / 0`` is NaN,
          which numpy casts to 0 on x86 anyway. The frame is still clipped to 1..255, as in the original.
        - Past the uint16 range the sum *wraps around* modulo 65536 (and |value| >= 2**31 gives 0), exactly as
          numpy's casts and uint16 addition do on x86-64: the paper mode's contract is the original's bytes,
          and the gains were tuned on those. It only happens when ``gain * pmax`` nears 65536 and shows as
          dark holes at the hottest pixels, so a ``RuntimeWarning`` says so; lower the gain, or use
          :func:`clean_overlay`, which normalises for you.
        - The scaling runs in float32 whatever the maps' dtype (byte-scaling reads them in float64): numpy
          does the same for float32 maps; for float64 maps numpy >= 2 would scale in float64.
    """
    frames = as_frames_tensor(_as_tensor(frames, "frames"))
    maps = _check_maps(saliency, frames.shape[0], "saliency")
    frames = frames.to(maps.device)
    if isinstance(channel, bool) or channel not in (0, 1, 2):
        raise ValueError(f"channel must be 0 (red), 1 (green) or 2 (blue), got {channel!r}")
    gain = _check_number(gain, "gain")
    sigma = _check_number(blur_sigma, "blur_sigma")
    out, wrapped = torch.empty_like(frames), False
    for start, stop in chunk_bounds(frames.shape[0], OVERLAY_CHUNK):
        out[start:stop], chunk_wrapped = _paper_overlay_chunk(
            frames[start:stop], maps[start:stop], channel, gain, sigma
        )
        wrapped |= chunk_wrapped
    if wrapped:
        peak = float(maps.amax()) * gain
        warnings.warn(
            f"paper_overlay: gain * map max reaches {peak:.6g}, beyond uint16; like the original, the sum wraps "
            "around modulo 65536 and the hottest pixels come out dark. Lower the gain or use the clean style.",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def paper_overlay_pair(
    frames, actor, critic, actor_gain: float, critic_gain: float, blur_sigma: float = 0.0
) -> torch.Tensor:
    """The paper's movie frames: the actor map added to blue (channel 2), then the critic map to red (channel
    0) of the result, one after the other as the original did. Shapes as :func:`paper_overlay`."""
    with_actor = paper_overlay(frames, actor, ACTOR_CHANNEL, actor_gain, blur_sigma)
    return paper_overlay(with_actor, critic, CRITIC_CHANNEL, critic_gain, blur_sigma)


# ------------------------------------------------------------------------------------- clean overlay ---


def movie_scales(maps, percentile: float = 99.5) -> float:
    """One normalisation for one kind of map over a whole movie: the ``percentile`` (nearest rank) of all its
    values, float ``(N, H, W)`` or any shape. Pass the same scale for every frame so brightness means the same
    in every frame. Returns 1.0 when that percentile is <= 0 (an all-zero movie then shows no overlay)."""
    maps = _as_tensor(maps, "maps").detach()
    if not maps.is_floating_point():
        raise TypeError(f"maps must be floating point, got {maps.dtype}: convert with .float()")
    if maps.numel() == 0:
        raise ValueError("maps is empty: there are no saliency values to normalise")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps holds NaN or infinite values: fix the saliency computation (or nan_to_num it)")
    percentile = _check_number(percentile, "percentile")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    flat = maps.flatten().double()
    rank = min(flat.numel(), max(1, math.ceil(percentile / 100 * flat.numel())))
    value = float(torch.kthvalue(flat, rank).values)
    return value if value > 0 else 1.0


def streamed_movie_scale(
    batches: Callable[[], Iterable], percentile: float = 99.5, hold: int = 2**22, bins: int = 4096
) -> float:
    """:func:`movie_scales` of maps too many to hold at once, exactly: ``batches()`` gives them afresh, in batches,
    for each pass over them. A first pass counts them; each further pass narrows the nearest rank down to one bin
    of a histogram, until at most ``hold`` values are left, which the last pass gathers (a few passes, one batch
    and the histogram in memory).

    >>> maps = torch.rand(9, 4, 4, generator=torch.Generator().manual_seed(0))
    >>> streamed_movie_scale(lambda: maps.split(2), hold=10, bins=4) == movie_scales(maps)
    True
    """
    percentile = _check_number(percentile, "percentile")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    levels: list[tuple[float, float, int]] = []  # the bins chosen so far: (low, high, bin) of each histogram

    def values() -> Iterable[torch.Tensor]:
        for batch in batches():
            v = _as_tensor(batch, "maps").detach().flatten().double()
            for low, high, b in levels:
                v = v[((v - low) / (high - low) * bins).floor().clamp(0, bins - 1) == b]
            yield v

    total, low, high = 0, math.inf, -math.inf
    for v in values():
        if not bool(torch.isfinite(v).all()):
            raise ValueError("maps holds NaN or infinite values: fix the saliency computation (or nan_to_num it)")
        if v.numel():
            total, low, high = total + v.numel(), min(low, float(v.min())), max(high, float(v.max()))
    if total == 0:
        raise ValueError("maps is empty: there are no saliency values to normalise")
    if not math.isfinite(high - low):
        raise ValueError(f"maps span {low:g}..{high:g}, beyond float64's range: fix the saliency computation")
    rank = min(total, max(1, math.ceil(percentile / 100 * total)))  # within the values the bins chosen keep
    count = total
    while low < high and count > hold:
        counts = torch.zeros(bins, dtype=torch.long)
        lows = torch.full((bins,), math.inf, dtype=torch.float64)
        highs = torch.full((bins,), -math.inf, dtype=torch.float64)
        for v in values():
            index = ((v - low) / (high - low) * bins).floor().clamp(0, bins - 1).long()
            counts += torch.bincount(index, minlength=bins)
            lows.scatter_reduce_(0, index, v, "amin")
            highs.scatter_reduce_(0, index, v, "amax")
        b = int(torch.searchsorted(counts.cumsum(0), rank))  # the first bin whose cumulative count reaches rank
        rank -= int(counts[:b].sum())
        levels.append((low, high, b))
        count, low, high = int(counts[b]), float(lows[b]), float(highs[b])
    if low == high:
        value = low
    else:
        value = float(torch.kthvalue(torch.cat(list(values())), rank).values)
    return value if value > 0 else 1.0


# Each kind's 256-entry lookup table: the saturated dark-to-mid part of matplotlib's reversed ColorBrewer
# sequential maps (lightness rises monotonically), so stronger saliency is more opaque and lighter (a glow)
# while staying clearly blue or red over the games' colours (their light ends fade to white).
CLEAN_COLORMAPS = {"actor": ("Blues_r", 0.0, 0.45), "critic": ("Reds_r", 0.0, 0.45)}


@lru_cache(maxsize=8)
def _lut_cpu(name: str, low: float, high: float) -> torch.Tensor:
    from matplotlib import colormaps

    rgb = colormaps[name](np.linspace(low, high, 256))[:, :3]
    return torch.tensor(rgb, dtype=torch.float32)


def colormap_lut(kind: str, device=None) -> torch.Tensor:
    """The ``(256, 3)`` float32 RGB lookup table (0..1) of ``kind`` ("actor" or "critic") on ``device``."""
    return _lut_cpu(*CLEAN_COLORMAPS[kind]).to(device)


def _upsample(maps: torch.Tensor, rows: int) -> torch.Tensor:
    """float ``(N, H, W)`` -> ``(N, rows, 160)``, bilinear in float (half-pixel centres)."""
    return F.interpolate(maps[:, None], size=(rows, FRAME_SHAPE[1]), mode="bilinear", align_corners=False)[:, 0]


def _clean_chunk(frames, actor, critic, actor_scale, critic_scale, alpha):
    out = frames.to(torch.float32) / 255
    top, bottom = map_rows(actor.shape)
    band = out[:, top:bottom]  # a view: blended in place
    for kind, maps, scale in (("actor", actor, actor_scale), ("critic", critic, critic_scale)):
        strength = (_upsample(maps.to(torch.float32), bottom - top) / scale).clamp_(0, 1)  # (n, rows, 160)
        colors = colormap_lut(kind, maps.device)[(strength * 255).round_().long()]  # (n, rows, 160, 3)
        weight = (alpha * strength)[..., None]
        band.mul_(1 - weight).add_(colors * weight)
    return (out * 255).round_().clamp_(0, 255).to(torch.uint8)


def clean_overlay(frames, actor, critic, actor_scale: float, critic_scale: float, alpha: float = 0.85) -> torch.Tensor:
    """A clean overlay: the actor map in blue, then the critic map in red, alpha-blended over the frame.

    Args:
        frames: uint8 ``(N, 210, 160, 3)``. actor, critic: float ``(N, H, W)``, on the same device.
        actor_scale, critic_scale: the saliency that counts as full strength, ONE per movie for each kind
            (see :func:`movie_scales`), so brightness means the same in every frame.
        alpha: opacity at full strength, in [0, 1].

    Returns:
        uint8 ``(N, 210, 160, 3)`` on the maps' device. Each map is resized to the rows it covers (160x160 at rows
        35..194 for 80x80 maps, the whole 210x160 frame otherwise; bilinear, in float), ``strength =
        clip(map / scale, 0, 1)`` picks a colour from the kind's 256-entry lookup table and the opacity
        ``alpha * strength``. Pixels with zero saliency keep their colour exactly.
    """
    frames = as_frames_tensor(_as_tensor(frames, "frames"))
    actor = _check_maps(actor, frames.shape[0], "actor")
    critic = _check_maps(critic, frames.shape[0], "critic")
    if critic.shape != actor.shape:
        raise ValueError(
            f"actor and critic maps must have one shape, got {tuple(actor.shape)} and {tuple(critic.shape)}"
        )
    if critic.device != actor.device:
        raise ValueError(f"actor and critic maps must be on one device, got {actor.device} and {critic.device}")
    for name, scale in (("actor_scale", actor_scale), ("critic_scale", critic_scale)):
        if not (isinstance(scale, (int, float, np.integer, np.floating)) and math.isfinite(scale) and scale > 0):
            raise ValueError(
                f"actor_scale and critic_scale must be finite numbers > 0, got {name}={scale!r}: "
                "compute them once per movie with movie_scales(maps)"
            )
    alpha = _check_number(alpha, "alpha")
    if alpha > 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    frames = frames.to(actor.device)
    out = torch.empty_like(frames)
    for start, stop in chunk_bounds(frames.shape[0], OVERLAY_CHUNK):
        out[start:stop] = _clean_chunk(
            frames[start:stop], actor[start:stop], critic[start:stop], float(actor_scale), float(critic_scale), alpha
        )
    return out


# --------------------------------------------------------------------------------------------- output ---


def _check_rgb(images, name: str, ndim: int) -> torch.Tensor:
    images = _as_tensor(images, name).detach()
    shape = "(N, H, W, 3)" if ndim == 4 else "(H, W, 3)"
    if images.ndim != ndim or images.shape[-1] != 3:
        raise ValueError(f"{name} must be RGB images {shape}, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 {shape}, got {images.dtype}: overlays return uint8 already")
    return images.cpu()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def write_movie(
    path,
    frames,
    fps: int = 8,
    labels: list[str] | None = None,
    scale: int = 2,
    progress: bool = False,
    num_frames: int | None = None,
) -> Path:
    """Encode uint8 ``(N, H, W, 3)`` frames as an H.264 mp4 (libx264, yuv420p, crf 18) at ``fps``.

    ``frames`` is one tensor or array, or, for a movie too long to hold at once, an iterable of them (consecutive
    batches of frames, made as they are encoded) with ``num_frames`` their total. Each frame is upscaled ``scale``
    times (nearest neighbour), padded by one black row/column if needed (yuv420p needs even sides) and captioned
    with ``labels[t]`` at its top left. ``progress`` shows a tqdm bar (where stderr is a terminal). The movie is
    written to a temporary file beside ``path`` and renamed when complete, so an interrupted run never leaves a
    truncated movie under ``path``. Returns ``path``.
    """
    import av

    if isinstance(frames, (torch.Tensor, np.ndarray)):
        frames = _check_rgb(frames, "movie frames", 4)
        batches: Iterable = [frames]
        n = frames.shape[0]
        if num_frames is not None and num_frames != n:
            raise ValueError(f"num_frames={num_frames}, but {n} frames were given")
    elif num_frames is None:
        raise ValueError("frames given in batches need num_frames, their total")
    else:
        batches, n = frames, int(num_frames)
    if n == 0:
        raise ValueError("no frames to write: the movie needs at least one")
    if labels is not None and (len(labels) != n or not all(isinstance(label, str) for label in labels)):
        raise ValueError(f"labels must be one string per frame: got {len(labels)} labels for {n} frames")
    for name, value in (("fps", fps), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    font = _font(6 * scale)

    def encode(tmp: Path) -> None:
        t = 0
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = None
            canvas = np.zeros((0, 0, 3), np.uint8)
            bar = tqdm(total=n, desc="movie", unit="frame", disable=None if progress else True)
            for batch in batches:
                batch = _check_rgb(batch, "movie frames", 4).numpy()
                if stream is None:  # the size of the first batch's frames sets the movie's
                    height, width = batch.shape[1] * scale, batch.shape[2] * scale
                    height, width = height + height % 2, width + width % 2
                    stream = container.add_stream("libx264", rate=int(fps))
                    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                    stream.options = {"crf": "18"}
                    canvas, size = np.zeros((height, width, 3), np.uint8), batch.shape[1:]
                if batch.shape[1:] != size or t + len(batch) > n:
                    raise ValueError(
                        f"movie frames of shape {batch.shape[1:]} at frame {t} (the first were {size}), or more than "
                        f"num_frames={n}: every batch holds frames of one size, {n} in all"
                    )
                for frame in batch:
                    big = frame.repeat(scale, axis=0).repeat(scale, axis=1)
                    canvas[: big.shape[0], : big.shape[1]] = big
                    image = Image.fromarray(canvas)
                    if labels is not None:
                        ImageDraw.Draw(image).text(
                            (3 * scale, 2 * scale),
                            labels[t],
                            fill=(255, 255, 255),
                            font=font,
                            stroke_width=max(1, scale // 2),
                            stroke_fill=(0, 0, 0),
                        )
                    for packet in stream.encode(av.VideoFrame.from_image(image)):
                        container.mux(packet)
                    t += 1
                    bar.update(1)
            bar.close()
            if t != n or stream is None:
                raise ValueError(f"the batches held {t} movie frames, not num_frames={n}")
            for packet in stream.encode():
                container.mux(packet)

    path = Path(path)
    with atomic_write(path, ".mp4") as tmp:
        encode(tmp)
    return path


def save_png(path, image) -> Path:
    """Write a uint8 ``(H, W, 3)`` image (numpy or torch, any device) as an RGB PNG, atomically."""
    image = _check_rgb(image, "image", 3).numpy()
    path = Path(path)
    with atomic_write(path, ".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def comparison_figure(
    path,
    frame,
    jacobian_actor,
    jacobian_critic,
    perturbation_actor,
    perturbation_critic,
    title: str = "Jacobian vs perturbation saliency",
) -> Path:
    """The 2017 paper's comparison for one frame, as an RGB PNG drawn with matplotlib's Agg canvas.

    Columns: Jacobian, perturbation. Rows: actor (blue), critic (red). ``frame`` is uint8 ``(210, 160, 3)``;
    each map is float ``(H, W)`` (as :func:`clean_overlay` places it), shown with the clean overlay scaled to its own maximum (the two methods'
    units are not comparable), the maximum printed in the panel title. Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = as_frames_tensor(_as_tensor(frame, "frame")[None])[0].cpu()
    panels = {
        ("actor", "Jacobian"): jacobian_actor,
        ("actor", "perturbation"): perturbation_actor,
        ("critic", "Jacobian"): jacobian_critic,
        ("critic", "perturbation"): perturbation_critic,
    }
    fig = Figure(figsize=(5.6, 7.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for kind, ax_row in zip(("actor", "critic"), axes):
        for method, ax in zip(("Jacobian", "perturbation"), ax_row):
            name = f"{method.lower()}_{kind}"
            maps = _as_tensor(panels[kind, method], name)
            if maps.ndim != 2:
                raise ValueError(f"{name} must be one saliency map (H, W), got shape {tuple(maps.shape)}")
            maps = _check_maps(maps[None], 1, name).cpu().float()
            peak = float(maps.max())
            zero = torch.zeros_like(maps)
            scale = peak if peak > 0 else 1.0
            pair = (maps, zero, scale, 1.0) if kind == "actor" else (zero, maps, 1.0, scale)
            ax.imshow(clean_overlay(frame[None], *pair)[0].numpy(), interpolation="nearest")
            ax.set_title(f"{kind}, {method}\n(max {peak:.3g})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return save_png(path, torch.from_numpy(np.ascontiguousarray(rgba[..., :3])))
