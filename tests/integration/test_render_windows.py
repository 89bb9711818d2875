"""A store job's movie and stills are made a window of frames at a time (engine.jobs.outputs.RENDER_WINDOW), so a
long rollout's outputs do not hold every frame at once: the images are those of one window over the whole rollout."""

from __future__ import annotations

import av
import numpy as np
import pytest

from engine.jobs import outputs
from engine.jobs.run import run_job
from engine.storage.store import ChunkStore
from tests.conftest import tiny_job


@pytest.mark.parametrize("style", ["paper", "clean"])
def test_windows_make_the_images_of_one_window(tmp_path, monkeypatch, style):
    encoded: list[np.ndarray] = []
    real_image = av.VideoFrame.from_image
    monkeypatch.setattr(
        av.VideoFrame, "from_image", lambda image: encoded.append(np.asarray(image)) or real_image(image)
    )
    # the reads of the stores while the outputs are rendered
    read: list[tuple[int, int, tuple]] = []
    rendering: list[bool] = []
    real_read, real_render = ChunkStore.read_range, outputs.render_outputs

    def spy(self, a, b, keys=None):
        if rendering:
            read.append((a, b, tuple(keys or ())))
        return real_read(self, a, b, keys)

    def render(*args, **kwargs):
        rendering.append(True)
        try:
            return real_render(*args, **kwargs)
        finally:
            rendering.clear()

    monkeypatch.setattr(ChunkStore, "read_range", spy)
    monkeypatch.setattr(outputs, "render_outputs", render)
    images = {}
    for window in (10**6, 3):
        monkeypatch.setattr(outputs, "RENDER_WINDOW", window)
        encoded.clear(), read.clear()
        out = tmp_path / f"window_{window}"
        run_job(
            tiny_job(
                out, steps=8, render={"style": style}, output={"stills": [1, 6]}, store={"rollout": str(out / "g")}
            )
        )
        images[window] = (list(encoded), [(out / f"frame_{t:05d}.png").read_bytes() for t in (1, 6)])
    (whole, whole_stills), (windowed, windowed_stills) = images[10**6], images[3]
    assert len(whole) == len(windowed) == 8 and all(np.array_equal(a, b) for a, b in zip(whole, windowed))
    assert whole_stills == windowed_stills
    # the overlays read frames and maps a window at a time (the labels read the actions at once, the comparison
    # figure one saliency chunk)
    wide = [(a, b, keys) for a, b, keys in read if b - a > 3 and keys in (("frames",), ("actor", "critic"))]
    assert read and not wide, wide


def test_own_agents_movie_as_the_docs_show_it(tmp_path):
    """docs/own-agent.md's "A movie of its maps", run as written on the built-in agent's rollout and maps."""
    import re
    from pathlib import Path

    import engine
    from engine.policies.registry import resolve_checkpoint

    text = (Path(__file__).parents[2] / "docs" / "own-agent.md").read_text()
    snippet = re.search(r"### A movie of its maps.*?```python\n(.*?)```", text, re.S).group(1)
    policy = engine.load_policy(resolve_checkpoint("builtin/pong_ppo"))
    played = engine.rollout(policy, "PongNoFrameskip-v4", 101, progress=False)
    maps = engine.perturbation_saliency(policy, played.observations, played.states, density=42)
    snippet = snippet.replace('"saliency.mp4"', repr(str(tmp_path / "saliency.mp4")))
    snippet = snippet.replace('"frame_00100.png"', repr(str(tmp_path / "frame_00100.png")))
    exec(snippet, {"played": played, "maps": maps})
    with av.open(str(tmp_path / "saliency.mp4")) as container:
        assert len(list(container.decode(video=0))) == 101
    assert (tmp_path / "frame_00100.png").stat().st_size > 0
