"""Rendering: the paper overlay against a plain numpy/Pillow/scipy implementation of spec section 6 on real
Pong frames; the clean overlay's movie-wide scale; movies that decode; stills, figures and input errors."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from engine.viz import rendering
from engine.viz.rendering import (
    clean_overlay,
    comparison_figure,
    movie_scales,
    paper_gains,
    paper_overlay,
    paper_overlay_pair,
    save_png,
    write_movie,
)


@pytest.fixture(scope="module")
def frames():
    """8 real Pong-v4 frames (seeded reset, seeded random actions), late enough to show the ball."""
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    env = gymnasium.make("Pong-v4")
    env.reset(seed=0)
    env.action_space.seed(0)
    seen = [env.step(env.action_space.sample())[0] for _ in range(64)]
    env.close()
    return np.stack(seen[-8:])


def byte_scale_ref(a):
    a = np.asarray(a, np.float64)
    span = a.max() - a.min() if a.max() != a.min() else 1.0
    return np.clip(np.floor((a - a.min()) * 255 / span + 0.5), 0, 255).astype(np.uint8)


def overlay_ref(saliency, atari, fudge_factor, channel, sigma=0):
    """Section 6 as the original numpy code (scipy's imresize = byte-scale + Pillow bilinear)."""
    pmax = saliency.max()
    S = np.asarray(Image.fromarray(byte_scale_ref(saliency)).resize((160, 160), Image.BILINEAR)).astype(np.float32)
    S = S if sigma == 0 else gaussian_filter(S, sigma=sigma)
    S -= S.min()
    S = fudge_factor * pmax * S / S.max()
    I = atari.astype("uint16")  # noqa: E741  (the original code's name for the image)
    I[35:195, :, channel] += S.astype("uint16")
    return I.clip(1, 255).astype("uint8")


def blob_maps(n, seed=0):
    """Smooth maps: three Gaussian blobs of different widths and heights each; the last map one bright peak
    on a faint background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:80, 0:80]
    maps = np.zeros((n, 80, 80), np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx, w, h = rng.uniform(0, 80), rng.uniform(0, 80), rng.uniform(3, 12), rng.uniform(0.01, 0.3)
            maps[i] += h * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
    maps[-1] = rng.uniform(0, 0.01, (80, 80))
    maps[-1, 40, 20] = 0.4
    return maps


# ------------------------------------------------------------------------------------- paper overlay ---


@pytest.mark.parametrize("sigma", [0, 1.5, 3])
@pytest.mark.parametrize("channel,gain", [(2, 500), (0, 600), (2, 37.3)])
def test_paper_overlay_is_byte_identical_to_numpy(frames, sigma, channel, gain):
    maps = blob_maps(len(frames))
    got = paper_overlay(frames, torch.from_numpy(maps), channel, gain, blur_sigma=sigma)
    assert got.dtype == torch.uint8 and got.shape == frames.shape
    expected = np.stack([overlay_ref(m, f, gain, channel, sigma) for m, f in zip(maps, frames)])
    np.testing.assert_array_equal(got.numpy(), expected)
    added = got.numpy()[:, 35:195, :, channel].astype(int) - frames[:, 35:195, :, channel].clip(1, 255)
    assert (added > 2).mean() > 0.02 and added.max() > 10  # it really overlays something
    others = [c for c in range(3) if c != channel]
    np.testing.assert_array_equal(got.numpy()[..., others], frames[..., others].clip(1, 255))


def test_paper_overlay_pair_is_blue_then_red(frames):
    actor, critic = blob_maps(8, seed=1), blob_maps(8, seed=2)
    got = paper_overlay_pair(torch.from_numpy(frames), actor, critic, 500, 600, blur_sigma=1.0).numpy()
    expected = [overlay_ref(c, overlay_ref(a, f, 500, 2, 1.0), 600, 0, 1.0) for f, a, c in zip(frames, actor, critic)]
    np.testing.assert_array_equal(got, np.stack(expected))


def test_paper_overlay_does_not_depend_on_chunking_or_map_dtype(frames, monkeypatch):
    maps = torch.from_numpy(blob_maps(8, seed=3))
    whole = paper_overlay(frames, maps, 2, 500, blur_sigma=2.0)
    assert torch.equal(whole, paper_overlay(frames, maps.double(), 2, 500, blur_sigma=2.0))
    monkeypatch.setattr(rendering, "OVERLAY_CHUNK", 3)
    assert torch.equal(whole, paper_overlay(frames, maps, 2, 500, blur_sigma=2.0))


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_constant_map_adds_nothing(frames, value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN / overflow warning either
        out = paper_overlay(frames, torch.full((8, 80, 80), value), 2, 500, blur_sigma=1.0)
    np.testing.assert_array_equal(out.numpy(), frames.clip(1, 255))  # the original's 1..255 clip still applies


def test_overflow_wraps_like_uint16_and_warns(frames):
    maps = blob_maps(8, seed=4) * 2000  # gain * pmax ~ 3e5: past 65535
    with pytest.warns(RuntimeWarning, match="wraps around modulo 65536"):
        got = paper_overlay(frames, maps, 2, 500).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.stack([overlay_ref(m, f, 500, 2) for m, f in zip(maps, frames)])
    np.testing.assert_array_equal(got, expected)
    assert (got[:, 35:195, :, 2] < 100).sum() > (frames[:, 35:195, :, 2] < 100).sum() // 100  # the dark holes


def test_paper_gains():
    assert paper_gains("Pong-v4") == (500, 600)
    assert paper_gains("ALE/Pong-v5") == paper_gains("PongNoFrameskip-v4") == (500, 600)
    assert paper_gains("ALE/Breakout-v5") == (300, 600)
    assert paper_gains("SpaceInvadersNoFrameskip-v4") == paper_gains("SpaceInvaders-v4") == (400, 400)
    with pytest.raises(ValueError, match=r"\['breakout', 'pong', 'spaceinvaders'\].*pass actor_gain and critic_gain"):
        paper_gains("ALE/Tetris-v5")


# ------------------------------------------------------------------------------------- clean overlay ---


def test_movie_scales():
    maps = torch.arange(1, 1001, dtype=torch.float32).reshape(10, 10, 10)
    assert movie_scales(maps, percentile=100) == 1000
    assert movie_scales(maps, percentile=99.5) == 995  # nearest rank over ALL frames, not per frame
    assert movie_scales(maps, percentile=50) == 500
    assert movie_scales(torch.zeros(3, 80, 80)) == 1.0
    with pytest.raises(ValueError, match="percentile must be in"):
        movie_scales(maps, percentile=0)


def test_clean_overlay_shares_one_scale_across_frames(frames):
    yy, xx = np.mgrid[0:80, 0:80]
    blob = torch.from_numpy(np.exp(-((yy - 30) ** 2 + (xx - 50) ** 2) / 50.0).astype(np.float32))
    actor = torch.stack([blob, 0.5 * blob])  # frame 1 has half the saliency of frame 0
    critic = torch.zeros_like(actor)
    critic[0] = blob.flip(1)
    scale = movie_scales(actor, percentile=100)
    assert scale == pytest.approx(float(blob.max()))
    out = clean_overlay(frames[:2], actor, critic, scale, movie_scales(critic, percentile=100))
    assert out.dtype == torch.uint8 and out.shape == (2, 210, 160, 3)
    change = (out.int() - torch.from_numpy(frames[:2]).int()).abs().sum(-1)
    assert change[0].max() > 1.5 * change[1].max() > 0  # dimmer, not re-normalised per frame
    peak_row, peak_col = 35 + 2 * 30, 2 * 50
    pixel = out[:, peak_row, peak_col].int()
    assert pixel[0, 2] > pixel[0, 0] and pixel[0, 2] > 150  # blue at the actor's peak
    mirrored = out[0, peak_row, 159 - peak_col].int()
    assert mirrored[0] > mirrored[2] and mirrored[0] > 150  # red at the critic's peak
    # no saliency, no change: outside the play area and where both maps are (numerically) zero
    assert torch.equal(out[:, :35], torch.from_numpy(frames[:2, :35]))
    assert torch.equal(out[1, 180:195, :20], torch.from_numpy(frames[1, 180:195, :20]))


def test_clean_overlay_saturates_above_the_scale(frames):
    actor = torch.zeros(2, 80, 80)
    actor[:, 20:30, 20:30] = torch.tensor([1.0, 5.0])[:, None, None]  # frame 1 is past the movie scale
    out = clean_overlay(frames[:2], actor, torch.zeros_like(actor), 1.0, 1.0, alpha=1.0)
    assert torch.equal(out[0, 35 + 50, 50], out[1, 35 + 50, 50])  # clipped to full strength, not beyond
    assert torch.equal(out[0, 35 + 50, 50], (rendering.colormap_lut("actor")[255] * 255).round().to(torch.uint8))


# --------------------------------------------------------------------------------------------- output ---


def test_movie_decodes_with_blue_at_the_actor_peak(tmp_path, frames):
    import av

    actor = torch.zeros(6, 80, 80)
    actor[:, 20:26, 50:56] = 1.0  # -> frame rows 35 + 40..51, columns 100..111
    actor[:, 0, 0] = 0.001
    overlays = paper_overlay_pair(frames[:6], actor, torch.zeros(6, 80, 80), 500, 600)
    labels = [f"Pong-v4  frame {t}" for t in range(6)]
    path = write_movie(tmp_path / "m.mp4", overlays, fps=8, labels=labels, scale=2)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == 8 and stream.codec_context.name == "h264"
    assert len(decoded) == 6 and decoded[0].shape == (420, 320, 3)
    last = decoded[-1].astype(int)
    original = frames[5].repeat(2, 0).repeat(2, 1).astype(int)
    blue_added = last[..., 2] - original[..., 2]
    near = blue_added[2 * 81 - 6 : 2 * 81 + 6, 2 * 106 - 6 : 2 * 106 + 6].mean()
    far = np.abs(blue_added[2 * 150 :, : 2 * 60]).mean()
    assert near > 80 and far < 8, (near, far)
    assert (last[4:20, 6:120] > 200).all(-1).sum() > 30  # the white label
    assert [p.name for p in tmp_path.iterdir()] == ["m.mp4"]


def test_interrupted_movie_leaves_nothing_under_its_name(tmp_path, frames, monkeypatch):
    import av

    (tmp_path / "m.mp4").write_bytes(b"old movie")
    calls = []

    def interrupt(image):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")

    monkeypatch.setattr(av.VideoFrame, "from_image", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_movie(tmp_path / "m.mp4", frames, fps=8)
    assert [p.name for p in tmp_path.iterdir()] == ["m.mp4"]
    assert (tmp_path / "m.mp4").read_bytes() == b"old movie"


def test_save_png_and_comparison_figure(tmp_path, frames):
    png = save_png(tmp_path / "still.png", torch.from_numpy(frames[3]))
    with Image.open(png) as image:
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), frames[3])
    maps = [torch.from_numpy(m) for m in blob_maps(4, seed=5)]
    fig = comparison_figure(tmp_path / "cmp.png", frames[3], *maps, title="Pong-v4, frame 3")
    with Image.open(fig) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (560, 720)
        rgb = np.asarray(image).astype(int)
    blue = rgb[..., 2] > rgb[..., 0] + 60
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 120)  # Pong's field is (144, 72, 17), its walls white
    assert blue[:360].sum() > 500 and red[360:].sum() > 500  # actor row in blue, critic row in red
    assert blue[360:].sum() == 0 and red[:360].sum() < 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.png", "still.png"]  # no temporary files left


# --------------------------------------------------------------------------------------------- errors ---


def test_bad_inputs_say_what_to_fix(frames, tmp_path):
    maps = torch.zeros(8, 80, 80)
    with pytest.raises(ValueError, match="one map per frame: 3 maps for 8 frames"):
        paper_overlay(frames, torch.zeros(3, 80, 80), 2, 500)
    with pytest.raises(ValueError, match=r"got one map \(80, 80\): use saliency\[None\]"):
        paper_overlay(frames, torch.zeros(80, 80), 2, 500)
    with pytest.raises(ValueError, match=r"saliency maps \(N, H, W\), got shape \(8, 1, 80, 80\)"):
        paper_overlay(frames, torch.zeros(8, 1, 80, 80), 2, 500)
    with pytest.raises(TypeError, match="floating point, got torch.uint8: convert with .float()"):
        paper_overlay(frames, maps.to(torch.uint8), 2, 500)
    with pytest.raises(ValueError, match="NaN or infinite"):
        paper_overlay(frames, torch.full((8, 80, 80), float("nan")), 2, 500)
    with pytest.raises(ValueError, match="channel must be 0 \\(red\\), 1 \\(green\\) or 2 \\(blue\\), got 3"):
        paper_overlay(frames, maps, 3, 500)
    with pytest.raises(ValueError, match="blur_sigma must be a finite number >= 0"):
        paper_overlay(frames, maps, 2, 500, blur_sigma=-1)
    with pytest.raises(ValueError, match=r"\(N, 210, 160, 3\)"):
        paper_overlay(frames[:, :100], maps, 2, 500)
    with pytest.raises(ValueError, match="uint8"):
        paper_overlay(frames.astype(np.float32), maps, 2, 500)
    with pytest.raises(TypeError, match="numpy array or torch tensor, got list"):
        paper_overlay(frames.tolist(), maps, 2, 500)
    with pytest.raises(ValueError, match="compute them once per movie with movie_scales"):
        clean_overlay(frames, maps, maps, 0, 1)
    with pytest.raises(ValueError, match="alpha must be in"):
        clean_overlay(frames, maps, maps, 1, 1, alpha=1.5)
    with pytest.raises(TypeError, match=r"uint8 \(N, H, W, 3\), got torch.float32"):
        write_movie(tmp_path / "x.mp4", torch.zeros(2, 10, 10, 3))
    with pytest.raises(ValueError, match="one string per frame: got 1 labels for 8 frames"):
        write_movie(tmp_path / "x.mp4", frames, labels=["a"])
    with pytest.raises(ValueError, match=r"RGB images \(H, W, 3\)"):
        save_png(tmp_path / "x.png", frames)
    with pytest.raises(ValueError, match=r"jacobian_actor must be one saliency map \(H, W\), got shape \(1, 80, 80\)"):
        comparison_figure(tmp_path / "x.png", frames[0], torch.zeros(1, 80, 80), *[torch.zeros(80, 80)] * 3)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------- standard pipelines ---


def test_maps_of_the_standard_pipeline_cover_the_whole_frame(frames):
    """84x84 maps come from a resize of the full 210x160 frame (spec: any agent, "Overlays"): a hot spot at the
    map's centre lands at the frame's centre, and rows outside the 2017 crop are drawn on too."""
    frames = np.asarray(frames)
    maps = torch.zeros(8, 84, 84)
    maps[:, 40:44, 40:44] = 1.0
    clean = clean_overlay(frames, maps, torch.zeros_like(maps), 1.0, 1.0, alpha=1.0).numpy()
    changed = np.argwhere((clean != frames).any(-1)[0])
    rows, cols = changed[:, 0], changed[:, 1]
    assert abs(rows.mean() - 105) < 2 and abs(cols.mean() - 80) < 2
    assert rows.min() > 90 and rows.max() < 120
    top = torch.zeros(8, 84, 84)
    top[:, :3] = 1.0  # the top rows of the observation: the score board, above the 2017 crop
    drawn = paper_overlay(frames, top, 2, 500).numpy()
    assert (drawn[:, :10, :, 2] != frames[:, :10, :, 2].clip(1, 255)).any()
    assert (drawn[:, 35:, :, 2] == frames[:, 35:, :, 2].clip(1, 255)).all()
    with pytest.raises(ValueError, match="one shape"):
        clean_overlay(frames, maps, torch.zeros(8, 80, 80), 1.0, 1.0)


def test_a_movie_written_in_batches_is_the_movie_written_at_once(tmp_path, frames, monkeypatch):
    """A long rollout's movie is encoded window by window: the encoder gets the images of the one-tensor call (what
    libx264 makes of them is its own: its threads make it vary in the last bits)."""
    import av

    actor = torch.rand(7, 80, 80, generator=torch.Generator().manual_seed(0))
    overlays = paper_overlay_pair(frames[:7], actor, actor.flip(1), 500, 600)
    labels = [f"frame {t}" for t in range(7)]
    encoded: list[np.ndarray] = []
    real = av.VideoFrame.from_image
    monkeypatch.setattr(av.VideoFrame, "from_image", lambda image: encoded.append(np.asarray(image)) or real(image))
    write_movie(tmp_path / "whole.mp4", overlays, labels=labels)
    whole, encoded[:] = list(encoded), []
    write_movie(tmp_path / "parts.mp4", iter(overlays.split(3)), labels=labels, num_frames=7)
    assert len(encoded) == len(whole) == 7 and all(np.array_equal(a, b) for a, b in zip(whole, encoded))
    with pytest.raises(ValueError, match="frames given in batches need num_frames"):
        write_movie(tmp_path / "x.mp4", iter(overlays.split(3)))
    with pytest.raises(ValueError, match="held 6 movie frames, not num_frames=7"):
        write_movie(tmp_path / "x.mp4", iter(overlays[:6].split(3)), num_frames=7)
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_the_streamed_movie_scale_is_the_percentile_of_all_maps(batch):
    """The clean style's scale of a long movie, from passes over its maps in batches, equals movie_scales of all of
    them at once: nearest rank, ties and zeros included, however few values a pass may gather."""
    generator = torch.Generator().manual_seed(batch)
    maps = torch.rand(50, 9, 9, generator=generator) ** 3
    maps[maps < 0.2] = 0
    maps[::5] = maps[::5].round(decimals=1)  # ties
    for percentile in (0.1, 50, 99.5, 100):
        for hold in (1, 100, 10**6):
            got = rendering.streamed_movie_scale(lambda: maps.split(batch), percentile, hold=hold, bins=8)
            assert got == movie_scales(maps, percentile), (percentile, hold)
    assert rendering.streamed_movie_scale(lambda: torch.zeros(3, 2, 2).split(1)) == 1.0  # nothing to show
