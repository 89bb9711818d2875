"""Overlays against a numpy/Pillow implementation of spec section 6; movies decode; figures are written."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from engine.reference import byte_scale_np
from engine.rendering import (
    clean_overlay, comparison_figure, movie_scales, paper_gains, paper_overlay, paper_overlay_pair, save_png, write_movie,
)


def overlay_np(saliency, atari, fudge_factor, channel=2, sigma=0):
    """Section 6 as the original numpy code (imresize = byte-scale + Pillow bilinear)."""
    pmax = saliency.max()
    S = np.asarray(Image.fromarray(byte_scale_np(saliency)).resize((160, 160), Image.BILINEAR)).astype(np.float32)
    S = S if sigma == 0 else gaussian_filter(S, sigma=sigma)
    S -= S.min()
    S = fudge_factor * pmax * S / S.max()
    I = atari.astype("uint16")
    I[35:195, :, channel] += S.astype("uint16")
    return I.clip(1, 255).astype("uint8")


def blob_maps(n, seed=0):
    """Realistic maps: a few Gaussian blobs of different heights, plus a single sharp peak in one map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:80, 0:80]
    maps = np.zeros((n, 80, 80), np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx, w, h = rng.uniform(0, 80), rng.uniform(0, 80), rng.uniform(3, 12), rng.uniform(0.01, 5)
            maps[i] += h * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
    maps[-1] = 0
    maps[-1, 40, 20] = 3.0
    return maps


@pytest.mark.parametrize("sigma", [0, 1.5])
@pytest.mark.parametrize("channel,gain", [(2, 500), (0, 600)])
def test_paper_overlay_is_byte_identical_to_numpy(pong_rollout, sigma, channel, gain):
    frames = pong_rollout.frames[30:36].numpy()
    maps = blob_maps(6)
    got = paper_overlay(frames, torch.from_numpy(maps), channel, gain, blur_sigma=sigma).numpy()
    expected = np.stack([overlay_np(m, f, gain, channel, sigma) for m, f in zip(maps, frames)])
    assert np.array_equal(got, expected)
    assert (got != frames).any()  # it did add something


def test_paper_overlay_on_real_saliency(pong_agent, pong_rollout):
    from engine.perturbation import perturbation_saliency

    frames, states = pong_rollout.frames[44:47], tuple(s[44:47] for s in pong_rollout.states)
    maps = perturbation_saliency(pong_agent, frames, states, density=8, compat="paper")
    got = paper_overlay_pair(frames, maps.actor, maps.critic, 500, 600).numpy()
    expected = []
    for f, a, c in zip(frames.numpy(), maps.actor.numpy(), maps.critic.numpy()):
        expected.append(overlay_np(c, overlay_np(a, f, 500, 2), 600, 0))
    assert np.array_equal(got, np.stack(expected))


def test_constant_map_adds_nothing(pong_rollout):
    frames = pong_rollout.frames[:2]
    out = paper_overlay(frames, torch.zeros(2, 80, 80), 2, 500)
    assert torch.equal(out, frames.clamp(1, 255))


def test_paper_gains():
    assert paper_gains("Pong-v4") == (500, 600) and paper_gains("ALE/Breakout-v5") == (300, 600)
    assert paper_gains("SpaceInvadersNoFrameskip-v4") == (400, 400)
    with pytest.raises(ValueError, match="set render.actor_gain"):
        paper_gains("ALE/Tetris-v5")


def test_clean_overlay_uses_one_scale_per_movie(pong_rollout):
    frames = pong_rollout.frames[:2]
    maps = torch.zeros(2, 80, 80)
    maps[0, 40, 40] = maps[1, 40, 40] = 1.0
    maps[1] *= 0.5  # half the saliency ...
    scale = movie_scales(maps, percentile=100)
    assert scale == 1.0
    out = clean_overlay(frames, maps, torch.zeros_like(maps), scale, 1.0).int()
    change = (out - frames.int()).abs().sum(-1)
    assert change[0].max() > change[1].max() > 0  # ... is dimmer, not re-normalised per frame
    with pytest.raises(ValueError, match="actor_scale and critic_scale must be > 0"):
        clean_overlay(frames, maps, maps, 0, 1)


def test_movie_decodes_with_blue_at_the_actor_peak(tmp_path, pong_rollout):
    import av

    frames = pong_rollout.frames[:6]
    actor = torch.zeros(6, 80, 80)
    actor[:, 20:26, 50:56] = 1.0  # a saliency peak at map (23, 53) -> frame row 35 + 46, column 106
    overlays = paper_overlay_pair(frames, actor, torch.zeros(6, 80, 80), 500, 600)
    path = write_movie(tmp_path / "m.mp4", overlays, fps=8, labels=[f"Pong-v4 frame {t}" for t in range(6)], scale=2)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == 8
    assert len(decoded) == 6 and decoded[0].shape == (420, 320, 3)
    last = decoded[-1].astype(int)
    original = np.repeat(np.repeat(frames[-1].numpy().astype(int), 2, 0), 2, 1)
    blue_added = last[..., 2] - original[..., 2]
    near = blue_added[2 * 81 - 6 : 2 * 81 + 6, 2 * 106 - 6 : 2 * 106 + 6].mean()
    far = np.abs(blue_added[2 * 150 :, : 2 * 40]).mean()
    assert near > 100 and far < 10
    assert [p.name for p in tmp_path.iterdir()] == ["m.mp4"]


def test_stills_and_comparison_figure(tmp_path, pong_rollout):
    frame = pong_rollout.frames[40]
    png = save_png(tmp_path / "still.png", frame)
    assert np.array_equal(np.asarray(Image.open(png)), frame.numpy())
    maps = [torch.from_numpy(m) for m in blob_maps(4)]
    fig = comparison_figure(tmp_path / "cmp.png", frame, *maps, title="test")
    image = Image.open(fig)
    assert image.format == "PNG" and image.size[0] > 300


def test_bad_inputs(pong_rollout):
    frames = pong_rollout.frames[:2]
    with pytest.raises(ValueError, match="one map per frame"):
        paper_overlay(frames, torch.zeros(3, 80, 80), 2, 500)
    with pytest.raises(ValueError, match="channel must be"):
        paper_overlay(frames, torch.zeros(2, 80, 80), 3, 500)
    with pytest.raises(ValueError, match=r"\(N, 210, 160, 3\)"):
        paper_overlay(frames[:, :100], torch.zeros(2, 80, 80), 2, 500)
    with pytest.raises(ValueError, match="uint8 \\(N, H, W, 3\\)"):
        write_movie("/tmp/x.mp4", frames.float())
