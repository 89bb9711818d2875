"""Object regions and saliency shares: found by colour on real Pong frames, shares computed exactly."""

import numpy as np
import pytest
import torch

from engine.metrics.regions import PONG_OBJECTS, near_cells, object_pixels, object_shares, region_share


def blank_pong_frame() -> np.ndarray:
    frame = np.zeros((1, 210, 160, 3), dtype=np.uint8)
    frame[:] = (144, 72, 17)  # Pong's background
    return frame


def test_objects_are_found_in_play_rows_only():
    frame = blank_pong_frame()
    frame[0, 100:102, 80:82] = PONG_OBJECTS["ball"]
    frame[0, 195:210] = PONG_OBJECTS["ball"]  # the bottom wall is white too
    frame[0, 2:10, 120:130] = PONG_OBJECTS["paddle"]  # a score digit has the paddle's colour
    ball = object_pixels(frame, PONG_OBJECTS["ball"])
    assert ball.shape == (1, 160, 160) and ball.sum() == 4 and ball[0, 65:67, 80:82].all()
    assert object_pixels(frame, PONG_OBJECTS["paddle"]).sum() == 0


def test_near_cells_is_a_disc_in_frame_pixels():
    pixels = torch.zeros(1, 160, 160, dtype=torch.bool)
    pixels[0, 80, 80] = True
    near = near_cells(pixels, 10)
    # cell (i, j) covers pixels 2i..2i+1: within 10 px of (80, 80) along an axis means cells 35..45
    assert near[0, 40, 35:46].all() and not near[0, 40, 34] and not near[0, 40, 46]
    # diagonal: pixel (87, 87) is at distance 9.9, (88, 88) at 11.3
    assert near[0, 43, 43] and not near[0, 44, 44]
    assert near_cells(pixels, 0).sum() == 1


def test_region_share_values():
    maps = torch.zeros(3, 80, 80)
    maps[0, :40] = 1.0  # half the mass in the top half
    maps[1, 10, 10] = 2.0  # all of it at one cell
    region = torch.zeros(3, 80, 80, dtype=torch.bool)
    region[0, :20] = True  # a quarter of the screen, half the mass
    region[1, 10, 10] = True
    # frame 2: the object is off screen, so it does not count
    share = region_share(maps, region)
    assert share.frames == 2
    assert share.saliency == pytest.approx((0.5 + 1.0) / 2)
    assert share.area == pytest.approx((0.25 + 1 / 6400) / 2)
    with pytest.raises(ValueError, match="must both be"):
        region_share(maps, region[:2])


def test_real_pong_frames_have_the_agent_paddle_on_the_right(pong_rollout):
    frames = pong_rollout.frames[40:60]
    paddle = object_pixels(frames, PONG_OBJECTS["paddle"])
    cols = paddle.any(dim=1).any(dim=0).nonzero().flatten()
    assert cols.min() >= 140 and cols.max() <= 143  # the agent's (right) paddle
    opponent = object_pixels(frames, PONG_OBJECTS["opponent"]).any(dim=1).any(dim=0).nonzero().flatten()
    assert opponent.max() < 20
    uniform = torch.ones(20, 80, 80)
    shares = object_shares(frames, uniform)
    for share in shares.values():  # a uniform map gives every region exactly its area
        assert share.frames > 0 and share.saliency == pytest.approx(share.area)
