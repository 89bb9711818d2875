"""report.html (engine.viz.report): every frame in the page, exactly; maps and statistics as computed; streamed
one window at a time; at most 50 MB for 2,000 frames; bad inputs refused; links stay inside the page's directory
and only the hashed viewer script may run; the app writes it for both job modes and for sweeps. The page in a real
browser: tests/app/test_report_browser.py."""

import base64
import functools
import hashlib
import json
import logging
import os
import re
from html.parser import HTMLParser
from importlib import resources

import numpy as np
import pytest

from engine.core.errors import EngineError
from engine.viz.report import (
    Panel,
    WindowedArray,
    decode_sheet,
    quantise,
    read_report_data,
    relative_link,
    sheet_size,
    write_report,
    write_sweep_report,
)
from tests.conftest import tiny_job as tiny_job_config

MB = 1_000_000
KINDS = ("actor", "critic", "jacobian_actor", "jacobian_critic")


# --- synthetic Atari-like runs, generated window by window (a 2,000-frame run never exists in memory at once) ---


def pong_like_frames(start: int, stop: int) -> np.ndarray:
    """Frames start..stop-1 of a Pong-like game (uint8 (N, 210, 160, 3)): background, walls, two paddles and a
    ball that move every frame, a score that changes every 97 frames; deterministic in the frame index."""
    t = np.arange(start, stop)
    n = len(t)
    frames = np.empty((n, 210, 160, 3), np.uint8)
    frames[:] = (144, 72, 17)
    frames[:, 24:34] = frames[:, 194:210] = (236, 236, 236)
    rows = np.arange(210)[None, :]
    for col, centre in (
        (16, 110 + (70 * np.sin(t / 17)).astype(int)),
        (140, 110 + (70 * np.sin(t / 11 + 1)).astype(int)),
    ):
        hit = (rows >= centre[:, None] - 8) & (rows < centre[:, None] + 8)  # (N, 210)
        frames[:, :, col : col + 4][hit] = (92, 186, 92) if col > 80 else (213, 130, 74)
    by = 40 + np.abs((t * 3) % 300 - 150)  # bouncing between the walls
    bx = 20 + np.abs((t * 2) % 240 - 120)
    for dy in range(4):
        for dx in range(2):
            frames[np.arange(n), np.minimum(by + dy, 193), bx + dx] = (236, 236, 236)
    digits = (t // 97) % 10  # the score: a block whose width follows the digit
    score = (np.arange(160)[None, :] >= 36) & (np.arange(160)[None, :] < 40 + 2 * digits[:, None])  # (N, 160)
    block = frames[:, 2:20]  # a view: (N, 18, 160, 3)
    block[np.broadcast_to(score[:, None, :], block.shape[:3])] = (213, 130, 74)
    return frames


def maps_like(kind: str, start: int, stop: int) -> np.ndarray:
    """Float32 (N, 80, 80) maps for frames start..stop-1: perturbation maps are smooth blobs on the ball, Jacobian
    maps noisy (|normal| noise under the blob), about as hard to compress as real ones (measured on Pong:
    ~0.5 kB and ~3.3 kB a frame)."""
    t = np.arange(start, stop)
    cy = (40 + np.abs((t * 3) % 300 - 150) - 35) / 2.0
    cx = (20 + np.abs((t * 2) % 240 - 120)) / 2.0
    yy, xx = np.mgrid[0:80, 0:80]
    blob = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * 6.0**2))
    if not kind.startswith("jacobian"):
        return (blob * (1 + 0.5 * np.sin(t / 5))[:, None, None] + 0.02 * np.exp(-((yy - 40) ** 2) / 800.0)).astype(
            np.float32
        )
    rng = np.random.default_rng([start, KINDS.index(kind)])
    return (np.abs(rng.standard_normal((len(t), 80, 80))) * (0.2 + blob)).astype(np.float32)


def synthetic_run(n: int, kinds=KINDS):
    """Frames, maps and series of an n-frame synthetic run, as WindowedArrays generated per window."""
    frames = WindowedArray(pong_like_frames, (n, 210, 160, 3))
    maps = {k: WindowedArray(lambda a, b, k=k: maps_like(k, a, b), (n, 80, 80)) for k in kinds}
    t = np.arange(n)
    series = dict(
        values=np.sin(t / 9.0).astype(np.float32),
        actions=(t // 3) % 6,
        rewards=np.where(t % 50 == 49, 1.0, 0.0),
        dones=t % 400 == 399,
    )
    return frames, maps, series


NAMES = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]


def dequantised(data: dict, sheets: dict, panel: int, kind: str) -> np.ndarray:
    """The maps as the page holds them: lo + q / 255 * (hi - lo), float64 (T, H, W)."""
    m = data["panels"][panel]["maps"][kind]
    h, w = m["shape"]
    q = np.concatenate([decode_sheet(uri)[..., 0].reshape(-1, h, w) for uri in sheets["maps"][panel][kind]])
    lo, hi = np.array(m["lo"]), np.array(m["hi"])
    return lo[:, None, None] + q / 255.0 * (hi - lo)[:, None, None]


# --- the page's content -------------------------------------------------------------------------------------


def test_every_frame_map_and_series_is_in_the_page(tmp_path):
    """70 frames = sheets of 32, 32 and 6: every frame decodes to the recorded pixels exactly; each map is within
    half a quantisation step of its float values; the statistics and series are those of the arrays."""
    n = 70
    frames = pong_like_frames(0, n)
    maps = {k: maps_like(k, 0, n) for k in KINDS}
    maps["critic"][5] = 0.0  # a map that is zero everywhere survives quantisation (no division by zero)
    _, _, series = synthetic_run(n)
    path = write_report(
        tmp_path / "report.html",
        frames,
        maps,
        action_names=NAMES,
        title="synthetic",
        checkpoint="ck.pt",
        settings={"radius": 5},
        **series,
    )
    data, sheets = read_report_data(path)
    assert data["frames"] == n and data["frames_per_sheet"] == 32 and len(sheets["frames"]) == 3
    assert data["lossy_sheets"] == [] and data["kinds"] == list(KINDS)
    shown = np.concatenate([decode_sheet(uri).reshape(-1, 210, 160, 3) for uri in sheets["frames"]])
    assert shown.shape == frames.shape and np.array_equal(shown, frames)
    for kind in KINDS:
        exact = maps[kind].astype(np.float64)
        m = data["panels"][0]["maps"][kind]
        assert m["shape"] == [80, 80] and m["rows"] == [35, 195]  # an 80x80 map covers the 2017 crop
        span = exact.max(axis=(1, 2)) - exact.min(axis=(1, 2))
        error = np.abs(dequantised(data, sheets, 0, kind) - exact).max(axis=(1, 2))
        assert np.all(error <= span / 510 * (1 + 1e-6) + 1e-12), kind
        assert m["max"] == pytest.approx(exact.max(axis=(1, 2)).tolist(), rel=1e-12)
        assert m["mean"] == pytest.approx(exact.mean(axis=(1, 2)).tolist(), rel=1e-9)
    assert np.all(dequantised(data, sheets, 0, "critic")[5] == 0.0)
    assert data["series"]["actions"] == series["actions"].tolist()
    assert data["series"]["values"] == pytest.approx(series["values"].tolist())
    assert data["series"]["dones"] == series["dones"].tolist() and data["action_names"] == NAMES
    assert data["checkpoint"] == "ck.pt" and data["settings"] == {"radius": 5}


def test_the_page_is_built_one_window_at_a_time(tmp_path):
    """Frames and maps are read in windows of frames_per_sheet, each once; nothing reads the whole run."""
    n, reads = 50, []
    frames = WindowedArray(lambda a, b: (reads.append(("frames", a, b)), pong_like_frames(a, b))[1], (n, 210, 160, 3))
    maps = {
        k: WindowedArray(lambda a, b, k=k: (reads.append((k, a, b)), maps_like(k, a, b))[1], (n, 80, 80))
        for k in ("actor", "critic")
    }
    write_report(tmp_path / "r.html", frames, maps, frames_per_sheet=16)
    windows = [(0, 16), (16, 32), (32, 48), (48, 50)]
    assert reads == [(name, a, b) for a, b in windows for name in ("frames", "actor", "critic")]


def test_steps_make_a_page_of_those_steps_numbered_as_in_the_run(tmp_path):
    """steps=[20, 55] of a 70-frame run: the same sheets and series as a page of the arrays sliced there, the
    steps' numbers kept (first_step, total_steps), and no frame or map outside them read."""
    n, reads = 70, []
    frames, maps, series = synthetic_run(n)
    spied = WindowedArray(lambda a, b: (reads.append((a, b)), pong_like_frames(a, b))[1], (n, 210, 160, 3))
    window = write_report(tmp_path / "window.html", spied, maps, action_names=NAMES, steps=[20, 55], **series)
    sliced = write_report(
        tmp_path / "sliced.html",
        pong_like_frames(20, 55),
        {k: np.concatenate([v[20:52], v[52:55]]) for k, v in maps.items()},  # as the windows read them (noise)
        action_names=NAMES,
        **{name: values[20:55] for name, values in series.items()},
    )
    (data, sheets), (want, want_sheets) = read_report_data(window), read_report_data(sliced)
    assert sheets == want_sheets and reads == [(20, 52), (52, 55)]
    assert (data["first_step"], data["frames"], data["total_steps"]) == (20, 35, n)
    assert {k: v for k, v in data.items() if k not in ("first_step", "total_steps")} == {
        k: v for k, v in want.items() if k not in ("first_step", "total_steps")
    }
    for steps in ([20, 71], [30, 30], [-1, 5], [1.0, 5], 7):
        with pytest.raises(EngineError, match=r"steps must be \[start, stop\] with 0 <= start < stop <= 70"):
            write_report(tmp_path / "bad.html", frames, maps, steps=steps)


def test_quantise_keeps_each_maps_own_range():
    maps = np.stack([np.linspace(0, 1, 16).reshape(4, 4), np.full((4, 4), 3.0), np.linspace(-2, 6, 16).reshape(4, 4)])
    q, lo, hi = quantise(maps)
    assert q.dtype == np.uint8 and lo.tolist() == [0.0, 3.0, -2.0] and hi.tolist() == [1.0, 3.0, 6.0]
    assert q[0, 0, 0] == 0 and q[0, -1, -1] == 255 and np.all(q[1] == 0) and q[2, 1, 0] == round(4 / 15 * 255)


def test_settings_cannot_break_out_of_the_page(tmp_path):
    """A setting holding </script> stays data: the JSON block reads back intact and the page has exactly the
    script elements the builder wrote."""
    evil = "</script><script>window.pwned = 1</script><!--"
    path = write_report(tmp_path / "r.html", pong_like_frames(0, 3), {}, title=evil, settings={"note": evil})
    data, _ = read_report_data(path)
    text = path.read_text()
    assert data["settings"] == {"note": evil} and data["title"] == evil
    # one sheet, the JSON block, the viewer: no element opened by the setting's text
    assert text.count("<script") == 3 and text.count("</script>") == 3
    assert "&lt;/script&gt;" in text.split("</title>")[0]  # the title is escaped HTML


def test_a_file_name_that_is_not_utf8_can_be_in_the_title(tmp_path):
    """Linux file names may hold any bytes, which Python keeps as surrogates: a checkpoint named so is in the title
    as U+FFFD (the page is UTF-8) and in the data as its escaped text."""
    name = os.fsdecode(b"pong_\xff.pt")
    path = write_report(tmp_path / "r.html", pong_like_frames(0, 2), {}, title=f"Pong-v4: {name}", checkpoint=name)
    assert "<title>Pong-v4: pong_\ufffd.pt</title>" in path.read_text(encoding="utf-8")
    data, _ = read_report_data(path)
    assert data["title"] == f"Pong-v4: {name}"


def test_the_viewer_is_the_package_assets_inlined_verbatim(tmp_path):
    """The page holds engine/viz/assets/report.css and report.js (package data, read with importlib.resources),
    byte for byte, in its one style element and its last script element."""
    assets = resources.files("engine.viz") / "assets"
    css, js = ((assets / name).read_text(encoding="utf-8") for name in ("report.css", "report.js"))
    assert "--accent" in css and "window.viewer" in js
    text = write_report(tmp_path / "r.html", pong_like_frames(0, 3), {}).read_text(encoding="utf-8")
    assert text.count("<style>") == 1 and f"<style>{css}</style>" in text
    assert text.endswith(f"<script>{js}</script>\n</body></html>\n")


def test_a_rewrite_that_fails_halfway_keeps_the_previous_page(tmp_path):
    """An error in the second window, after the first is on disk: the earlier page stays as it was and no
    temporary file is left beside it."""
    path = write_report(tmp_path / "report.html", pong_like_frames(0, 3), {}, title="earlier")
    earlier = path.read_bytes()

    def read(a, b):
        if a > 0:
            raise OSError(28, "No space left on device")
        return pong_like_frames(a, b)

    with pytest.raises(OSError, match="No space left"):
        write_report(path, WindowedArray(read, (40, 210, 160, 3)), {}, frames_per_sheet=16)
    assert path.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == ["report.html"]


# --- size ------------------------------------------------------------------------------------------------------


def test_2000_frames_stay_under_50_mb_with_every_frame_present(tmp_path):
    """A synthetic 2,000-frame Pong-like run with actor and critic maps (the main job's): under 50 MB, stored
    lossless (no sheet needed the lossy fallback), and every one of the 2,000 frames and maps is in the page."""
    n = 2000
    frames, maps, series = synthetic_run(n, kinds=("actor", "critic"))
    path = write_report(tmp_path / "report.html", frames, maps, action_names=NAMES, **series)
    size = path.stat().st_size
    data, sheets = read_report_data(path)
    assert size < 50 * MB, f"{size / MB:.1f} MB for {n} frames"
    assert data["lossy_sheets"] == [] and data["frames"] == n and len(data["series"]["actions"]) == n
    assert [sheet_size(uri) for uri in sheets["frames"]] == [(160, 32 * 210)] * 62 + [(160, 16 * 210)]
    for kind in ("actor", "critic"):
        assert len(data["panels"][0]["maps"][kind]["max"]) == n
        assert [sheet_size(uri) for uri in sheets["maps"][0][kind]] == [(80, 32 * 80)] * 62 + [(80, 16 * 80)]
    for sheet in (0, 31, 62):  # decoded: the recorded pixels, in order
        shown = decode_sheet(sheets["frames"][sheet]).reshape(-1, 210, 160, 3)
        assert np.array_equal(shown, pong_like_frames(32 * sheet, 32 * sheet + len(shown)))
    print(f"2000 synthetic frames, actor + critic: {size / MB:.1f} MB ({size / n / 1000:.1f} kB a frame)")


def test_all_four_maps_extrapolate_under_50_mb_for_2000_frames(tmp_path):
    """With both Jacobian maps too (noisy, the largest): 320 frames measured, bytes per frame (the page's fixed
    part included, so an overestimate) times 2,000 stays under 50 MB, lossless."""
    n = 320
    frames, maps, series = synthetic_run(n)
    path = write_report(tmp_path / "report.html", frames, maps, action_names=NAMES, **series)
    per_frame = path.stat().st_size / n
    data, _ = read_report_data(path)
    assert data["lossy_sheets"] == [] and data["kinds"] == list(KINDS)
    assert per_frame * 2000 < 50 * MB, f"{per_frame / 1000:.1f} kB a frame"
    print(f"4 maps: {per_frame / 1000:.1f} kB a frame, {per_frame * 2000 / MB:.1f} MB for 2000 frames")


def test_noise_falls_back_to_lossy_within_the_budget_and_keeps_every_frame(tmp_path):
    """Content no lossless coder can shrink (uniform noise) is re-encoded lossy to fit the per-frame budget;
    the page says which sheets, and still holds every frame."""
    n = 40
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, 210, 160, 3), dtype=np.uint8)
    maps = {"actor": rng.random((n, 80, 80), dtype=np.float32)}
    budget = 30_000
    path = write_report(tmp_path / "r.html", frames, maps, frames_per_sheet=16, max_bytes_per_frame=budget)
    data, sheets = read_report_data(path)
    assert data["lossy_sheets"] == [0, 1, 2]
    assert sum(decode_sheet(uri).shape[0] for uri in sheets["frames"]) == n * 210
    payload = sum(len(uri) for uri in sheets["frames"] + sheets["maps"][0]["actor"]) * 3 / 4  # base64 -> bytes
    assert payload <= budget * n * 1.01
    shown = np.concatenate([decode_sheet(uri).reshape(-1, 210, 160, 3) for uri in sheets["frames"]])
    assert np.abs(shown.astype(int) - frames).mean() < 80  # lossy, but the same images (noise vs noise: ~85)


# --- bad inputs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames,maps,kwargs,message",
    [
        (np.zeros((4, 84, 84), np.uint8), {}, {}, "raw ALE frames (T, 210, 160, 3)"),
        (np.zeros((0, 210, 160, 3), np.uint8), {}, {}, "frames is empty"),
        ([1, 2, 3], {}, {}, "must be an array with time as its first axis"),
        (np.zeros((4, 210, 160, 3), np.uint8), {"actor": np.zeros((3, 80, 80), np.float32)}, {}, "3 maps for 4 frames"),
        (
            np.zeros((4, 210, 160, 3), np.uint8),
            {"saliency": np.zeros((4, 80, 80), np.float32)},
            {},
            "unknown map kind 'saliency'",
        ),
        (np.zeros((4, 210, 160, 3), np.uint8), {"actor": np.zeros((4, 80), np.float32)}, {}, "must be (T, H, W)"),
        (
            np.zeros((4, 210, 160, 3), np.uint8),
            {"actor": np.full((4, 80, 80), np.nan, np.float32)},
            {},
            "NaN or infinite",
        ),
        (np.zeros((4, 210, 160, 3), np.uint8), {}, {"values": np.zeros(5)}, "values holds 5 values for 4 frames"),
        (np.zeros((4, 210, 160, 3), np.float32), {}, {}, "expected uint8"),
        (np.zeros((4, 210, 160, 3), np.uint8), {}, {"frames_per_sheet": 100}, "frames_per_sheet must be in 1..78"),
    ],
)
def test_bad_inputs_are_refused_with_the_problem_named(tmp_path, frames, maps, kwargs, message):
    with pytest.raises(EngineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_report(tmp_path / "r.html", frames, maps, **kwargs)
    assert list(tmp_path.iterdir()) == []  # no page, and no temporary file left behind


def test_sweep_page_without_a_shared_game_is_the_table_and_links(tmp_path):
    rows = [{"job": "0", "radius": 3, "actor_max": 0.5}, {"job": "1", "radius": 5, "actor_max": None}]
    path = write_sweep_report(
        tmp_path / "report.html", rows, ["job", "radius", "actor_max"], links={"0": "0/report.html"}
    )
    data, sheets = read_report_data(path)
    assert data["frames"] == 0 and sheets["frames"] == [] and data["kind"] == "sweep"
    assert data["table"] == {
        "columns": ["job", "radius", "actor_max"],
        "rows": [["0", 3, 0.5], ["1", 5, None]],
        "links": {"0": "0/report.html"},
    }
    with pytest.raises(EngineError, match="panels need the frames"):
        write_sweep_report(tmp_path / "x.html", rows, ["job"], panels=[Panel("0", {})])


# --- nothing from the data runs -----------------------------------------------------------------------------------

HREF = re.compile(r"^(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+(?:/(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+)*$")  # what a link may be


@pytest.mark.parametrize(
    "link,href",
    [
        ("0/report.html", "0/report.html"),
        ("job 7/report.html", "job%207/report.html"),
        ("a#b?c%d/report.html", "a%23b%3Fc%25d/report.html"),  # a folder name, never a fragment, query or escape
        (
            '"><img src=x onerror=alert(1)>/report.html',
            "%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/report.html",
        ),
        ("x/./y/../report.html", "x/report.html"),  # normalised, and inside
        ("x\\..\\..\\etc/report.html", "x%5C..%5C..%5Cetc/report.html"),  # a backslash is part of a name here
        ("sweep=1,tag=<b>/report.html", "sweep%3D1%2Ctag%3D%3Cb%3E/report.html"),  # a Hydra override_dirname
    ],
)
def test_a_link_inside_the_page_directory_is_kept_url_encoded(tmp_path, link, href):
    assert relative_link(link, tmp_path) == href
    assert HREF.match(href) and ":" not in href


@pytest.mark.parametrize(
    "link,problem",
    [
        ("javascript:alert(1)", "scheme"),
        ("JaVaScRiPt:alert(1)", "scheme"),
        (" javascript:alert(1)", "scheme"),  # browsers strip the space: so does the check
        ("java\tscript:alert(1)", "scheme"),  # browsers drop the tab: so does the check
        ("javascript:alert(1)/report.html", "scheme"),
        ("data:text/html,<script>alert(1)</script>", "scheme"),
        ("vbscript:msgbox(1)", "scheme"),
        ("file://host/share/report.html", "scheme or a host"),
        ("file:///etc/passwd", "scheme"),
        ("https://example.com/report.html", "scheme"),
        ("//example.com/report.html", "host"),
        ("/etc/passwd", "absolute"),
        ("../../etc", "leaves the page's directory"),
        ("../../etc/report.html", "leaves the page's directory"),
        ("0/../../etc/report.html", "leaves the page's directory"),
        ("..", "leaves the page's directory"),
        (".", "own directory"),
        ("", "empty"),
        ("a\x00b/report.html", "NUL"),
    ],
)
def test_a_link_that_could_lead_elsewhere_is_dropped_and_logged(tmp_path, caplog, link, problem):
    with caplog.at_level(logging.WARNING, logger="engine.viz.report"):
        assert relative_link(link, tmp_path, "job 'x'") is None
    assert problem in caplog.text and "job 'x'" in caplog.text and repr(link) in caplog.text


def test_a_symlink_pointing_out_of_the_page_directory_is_dropped(tmp_path, caplog):
    sweep, outside = tmp_path / "sweep", tmp_path / "outside"
    (sweep / "0").mkdir(parents=True)
    outside.mkdir()
    (outside / "report.html").write_text("elsewhere")
    (sweep / "out").symlink_to(outside)
    (sweep / "alias").symlink_to(sweep / "0")
    (sweep / "loop").symlink_to(sweep / "loop")
    with caplog.at_level(logging.WARNING, logger="engine.viz.report"):
        assert relative_link("out/report.html", sweep) is None
        assert relative_link("loop/report.html", sweep) is None
    assert "a symlink pointing out" in caplog.text and "cannot be resolved" in caplog.text
    assert relative_link("alias/report.html", sweep) == "alias/report.html"  # a symlink that stays inside is fine


def test_a_link_that_is_not_a_path_is_refused(tmp_path):
    with pytest.raises(EngineError, match="a link must be a path .* got int"):
        relative_link(3, tmp_path)


def test_sweep_links_from_data_are_checked_where_the_page_is_written(tmp_path, caplog):
    """write_sweep_report (every caller, the multirun callback included): hostile job folders keep their row, and
    get a link only as an encoded path inside the sweep directory; panel links the same."""
    sweep = tmp_path / "sweep"
    jobs = ["0", "javascript:alert(1)", '"><img src=x onerror=alert(1)>', "../../etc", "a#b?c%d"]
    rows = [{"job": job, "radius": 3} for job in jobs]
    links = {job: f"{job}/report.html" for job in jobs}  # as engine.jobs.outputs.sweep_report builds them
    with caplog.at_level(logging.WARNING, logger="engine.viz.report"):
        path = write_sweep_report(sweep / "report.html", rows, ["job", "radius"], links=links)
    data, _ = read_report_data(path)
    assert [row[0] for row in data["table"]["rows"]] == jobs
    img = '"><img src=x onerror=alert(1)>'
    assert data["table"]["links"] == {
        "0": "0/report.html",
        "a#b?c%d": "a%23b%3Fc%25d/report.html",
        img: "%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/report.html",
    }
    assert "job 'javascript:alert(1)'" in caplog.text and "job '../../etc'" in caplog.text

    frames = pong_like_frames(0, 2)
    panels = [Panel(job, {"actor": maps_like("actor", 0, 2)}, label=f"<b>{job}</b>", link=links[job]) for job in jobs]
    path = write_sweep_report(sweep / "report.html", rows, ["job"], frames=frames, panels=panels, links=links)
    data, _ = read_report_data(path)
    assert [p["link"] for p in data["panels"]] == [data["table"]["links"].get(job) for job in jobs]
    assert [p["label"] for p in data["panels"]] == [f"<b>{job}</b>" for job in jobs]  # text, for the viewer


class _Markup(HTMLParser):
    """The elements of a page as an HTML parser sees them: (tag, attributes) and the text of each script/style."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.texts, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None
        if self._open:
            self.texts.append((tag, dict(attrs), ""))

    def handle_data(self, data):
        if self._open:
            tag, attrs, text = self.texts[-1]
            self.texts[-1] = (tag, attrs, text + data)

    def handle_endtag(self, tag):
        self._open = None


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def test_only_the_hashed_viewer_script_can_run(tmp_path):
    """The page's CSP: script-src is exactly the SHA-256 of the one inline script's bytes (no 'unsafe-inline'),
    style-src the hash of the one style element; every other script element is a JSON data block; no element has
    an inline event handler, and markup in the data (title, names, settings) opens no element."""
    evil = '"><img src=x onerror=alert(1)><script>alert(1)</script>'
    path = write_report(
        tmp_path / "r.html",
        pong_like_frames(0, 3),
        {"actor": maps_like("actor", 0, 3)},
        title=f"ALE/{evil}-v5",
        action_names=[evil, "FIRE"],
        checkpoint=evil,
        settings={"tags": [evil], "overrides": [f"saliency.radius={evil}"]},
        actions=np.array([0, 1, 0]),
    )
    markup = _Markup()
    markup.feed(path.read_text(encoding="utf-8"))
    assert {tag for tag, _ in markup.tags} == {
        "html",
        "head",
        "meta",
        "link",
        "title",
        "style",
        "body",
        "noscript",
        "script",
    }
    assert not [(tag, a) for tag, attrs in markup.tags for a in attrs if a.lower().startswith("on")]
    csp = next(
        attrs["content"]
        for tag, attrs in markup.tags
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"
    )
    policy = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    code = [text for tag, attrs, text in markup.texts if tag == "script" and attrs.get("type") != "application/json"]
    styles = [text for tag, _, text in markup.texts if tag == "style"]
    assert len(code) == 1 and len(styles) == 1 and "window.viewer" in code[0]
    assert policy["script-src"] == [_sha256(code[0])] and "'unsafe-inline'" not in csp
    assert policy["style-src"] == [_sha256(styles[0])]
    assert policy["default-src"] == ["'none'"] and policy["img-src"] == ["data:"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'none'"]
    assert [attrs.get("type") for tag, attrs in markup.tags if tag == "script"] == ["application/json"] * 2 + [None]
    data, _ = read_report_data(path)
    assert data["title"] == f"ALE/{evil}-v5" and data["action_names"][0] == evil and data["checkpoint"] == evil


# --- the app writes it ------------------------------------------------------------------------------------------

tiny_job = functools.partial(tiny_job_config, steps=6, movie=False)


def test_the_main_job_writes_a_report_of_its_arrays(tmp_path):
    """In-memory job: the page holds the rollout's frames exactly, its actions, values and names, the maps of
    saliency.npz within a quantisation step; 2,000 frames at the measured bytes per frame stay under 50 MB."""
    from engine.jobs.run import run_job
    from engine.storage.arrays import load_arrays

    written = run_job(tiny_job(tmp_path, saliency={"method": "both"}))
    data, sheets = read_report_data(written["report"])
    played, _ = load_arrays(tmp_path / "rollout.npz")
    maps, settings = load_arrays(tmp_path / "saliency.npz")
    shown = np.concatenate([decode_sheet(uri).reshape(-1, 210, 160, 3) for uri in sheets["frames"]])
    assert np.array_equal(shown, played["frames"])
    assert data["series"]["actions"] == played["actions"].tolist() and data["action_names"][:2] == ["NOOP", "FIRE"]
    assert data["series"]["values"] == pytest.approx(played["values"].tolist(), rel=1e-6)
    assert data["kinds"] == list(KINDS) and data["checkpoint"] == settings["checkpoint"]
    for kind in KINDS:
        span = maps[kind].max(axis=(1, 2)) - maps[kind].min(axis=(1, 2))
        error = np.abs(dequantised(data, sheets, 0, kind) - maps[kind]).max(axis=(1, 2))
        assert np.all(error <= span / 510 * 1.001 + 1e-9), kind
    assert data["settings"]["config"]["saliency"]["density"] == 20
    per_frame = written["report"].stat().st_size / 6  # fixed overhead included: an upper bound
    assert per_frame * 2000 < 50 * MB, f"{per_frame / 1000:.1f} kB a frame"
    assert json.loads((tmp_path / "summary.json").read_text())["written"]["report"] == str(written["report"])


def test_a_game_another_checkpoint_played_shows_its_values_as_the_players(tmp_path):
    """The values are recorded with the game: a job that replays another checkpoint's game showed them as "value",
    as if they were its own agent's."""
    from engine.jobs.run import run_job

    store = {"rollout": str(tmp_path / "game"), "player": "builtin/pong"}
    own = run_job(tiny_job(tmp_path / "player", store=store))
    other = {"checkpoint": "builtin/pong@500160"}
    replayed = run_job(tiny_job(tmp_path / "other", store=store, agent=other))
    assert read_report_data(own["report"])[0]["value_label"] == "value"
    data = read_report_data(replayed["report"])[0]
    assert data["value_label"] == "value of the checkpoint that played the recorded game"
    assert data["series"]["values"] == read_report_data(own["report"])[0]["series"]["values"]


def test_a_long_run_shows_its_first_steps_unless_told_which(tmp_path, monkeypatch):
    """Over REPORT_MAX_MAPS maps (frames times kinds) the page holds the first frames, and the log and summary.json's warnings say so;
    output.report_steps picks others (a window the run ended before shows its last steps, with a warning)."""
    from engine.jobs import outputs
    from engine.jobs.run import run_job
    from engine.storage.arrays import load_arrays

    monkeypatch.setattr(outputs, "REPORT_MAX_MAPS", 9)  # actor and critic maps: 4 frames
    run_job(tiny_job(tmp_path))
    played, _ = load_arrays(tmp_path / "rollout.npz")
    data, sheets = read_report_data(tmp_path / "report.html")
    shown = np.concatenate([decode_sheet(uri).reshape(-1, 210, 160, 3) for uri in sheets["frames"]])
    assert (data["first_step"], data["frames"], data["total_steps"]) == (0, 4, 6)
    assert np.array_equal(shown, played["frames"][:4]) and data["series"]["actions"] == played["actions"][:4].tolist()
    warnings = json.loads((tmp_path / "summary.json").read_text())["warnings"]
    assert any("report.html shows the first 4 of the run's 6 steps" in w for w in warnings)
    run_job(tiny_job(tmp_path, output={"report_steps": [1, 6]}))  # told: more than the cap
    data, sheets = read_report_data(tmp_path / "report.html")
    shown = np.concatenate([decode_sheet(uri).reshape(-1, 210, 160, 3) for uri in sheets["frames"]])
    assert (data["first_step"], data["frames"]) == (1, 5) and np.array_equal(shown, played["frames"][1:])
    assert json.loads((tmp_path / "summary.json").read_text())["warnings"] == []
    assert outputs.report_steps([4, 9], 6) == (
        (1, 6),
        "output.report_steps=[4, 9]: the run ended after 6 steps, so report.html shows steps 1..5",
    )


def test_output_report_false_writes_no_page_and_a_rerun_removes_the_old_one(tmp_path):
    from engine.jobs.run import run_job

    run_job(tiny_job(tmp_path, rollout={"steps": 2}))
    assert (tmp_path / "report.html").is_file()
    written = run_job(tiny_job(tmp_path, rollout={"steps": 2}, output={"report": False}))
    assert "report" not in written and not (tmp_path / "report.html").exists()


def test_store_jobs_and_their_sweep_stream_the_report_from_the_stores(tmp_path, monkeypatch):
    """Two store jobs replay one recorded game; each job's page equals the stores' contents, and the multirun
    callback writes the sweep page with both jobs as panels over the same frames, and summary.csv as its table."""
    from omegaconf import OmegaConf

    from engine.cli.app import SUMMARY_COLUMNS, SweepSummary
    from engine.jobs import outputs
    from engine.jobs.run import run_job
    from engine.storage.store import RolloutStore, SaliencyStore

    sweep, game = tmp_path / "sweep", str(tmp_path / "game")
    for job, radius in (("0", 3), ("1", 5)):
        run_job(
            tiny_job(
                sweep / job,
                rollout={"steps": 10},
                saliency={"radius": radius},
                store={"rollout": game, "frames_per_chunk": 4},
            )
        )
    recorded = RolloutStore.open(game).read()
    for job in ("0", "1"):
        data, sheets = read_report_data(sweep / job / "report.html")
        shown = np.concatenate([decode_sheet(uri).reshape(-1, 210, 160, 3) for uri in sheets["frames"]])
        assert np.array_equal(shown, recorded.frames.numpy())
        assert data["series"]["actions"] == recorded.actions.tolist()
        maps = SaliencyStore.open(sweep / job / "saliency_store").read()
        span = maps["actor"].max(axis=(1, 2)) - maps["actor"].min(axis=(1, 2))
        assert np.all(
            np.abs(dequantised(data, sheets, 0, "actor") - maps["actor"]).max(axis=(1, 2)) <= span / 510 * 1.001 + 1e-12
        )
    SweepSummary().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "output": {"report": True}})
    )
    data, sheets = read_report_data(sweep / "report.html")
    assert data["kind"] == "sweep" and data["frames"] == 10 and [p["name"] for p in data["panels"]] == ["0", "1"]
    assert [p["label"] for p in data["panels"]] == ["job 0: radius=3.0", "job 1: radius=5.0"]
    assert data["table"]["columns"] == list(SUMMARY_COLUMNS) and len(data["table"]["rows"]) == 2
    assert data["table"]["links"] == {"0": "0/report.html", "1": "1/report.html"}
    shown = np.concatenate([decode_sheet(uri).reshape(-1, 210, 160, 3) for uri in sheets["frames"]])
    assert np.array_equal(shown, recorded.frames.numpy())
    radius_3 = dequantised(data, sheets, 0, "actor")
    assert not np.allclose(radius_3, dequantised(data, sheets, 1, "actor"))  # each job's own maps
    own, own_sheets = read_report_data(sweep / "0" / "report.html")
    assert np.array_equal(radius_3, dequantised(own, own_sheets, 0, "actor"))
    # the sweep's steps: output.report_steps, or REPORT_MAX_MAPS over its panels' maps (here 18 // (2 x 2))
    SweepSummary().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "output": {"report": True, "report_steps": [3, 7]}})
    )
    data, sheets = read_report_data(sweep / "report.html")
    assert (data["first_step"], data["frames"]) == (3, 4)
    assert np.array_equal(dequantised(data, sheets, 0, "actor"), radius_3[3:7])
    monkeypatch.setattr(outputs, "REPORT_MAX_MAPS", 18)
    SweepSummary().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "output": {"report": True}})
    )
    data, _ = read_report_data(sweep / "report.html")
    assert (data["first_step"], data["frames"], data["total_steps"]) == (0, 4, 10)


def test_a_sweep_of_shards_of_one_store_shows_it_as_one_panel_with_the_whole_stores_numbers(tmp_path):
    """The shard that finished first recorded its store incomplete: the sweep page fell back to the table alone, and
    that shard's row in summary.csv kept the statistics of half the store."""
    import csv

    from omegaconf import OmegaConf

    from engine.cli.app import SweepSummary
    from engine.jobs.run import run_job
    from engine.storage.store import SaliencyStore

    sweep, maps = tmp_path / "sweep", str(tmp_path / "maps")
    for shard in (0, 1):
        store = {"rollout": str(tmp_path / "game"), "saliency": maps, "frames_per_chunk": 4}
        run_job(tiny_job(sweep / str(shard), rollout={"steps": 10}, store={**store, "shard": shard, "num_shards": 2}))
    SweepSummary().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "output": {"report": True}})
    )
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    whole = SaliencyStore.open(maps).read()["actor"]
    assert [row["complete"] for row in rows] == ["True", "True"]
    assert [float(row["actor_mean"]) for row in rows] == [pytest.approx(float(whole.mean()), rel=1e-5)] * 2
    data, sheets = read_report_data(sweep / "report.html")
    assert [p["name"] for p in data["panels"]] == ["0"] and data["panels"][0]["label"].endswith(", 1")
    assert data["frames"] == 10
    # jobs that are no shards keep their own rows, though they share a store (only metrics settings differ)
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        summary["config"]["store"]["num_shards"], summary["complete"] = 1, True
        summary["actor_mean"] = {"0": 0.25, "1": 0.75}[job]
        (sweep / job / "summary.json").write_text(json.dumps(summary))
    SweepSummary().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "output": {"report": False}})
    )
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [float(row["actor_mean"]) for row in rows] == [0.25, 0.75]


def test_a_sweep_of_many_games_jobs_says_so_and_writes_its_table(tmp_path, caplog):
    """Jobs of rollout.num_envs games keep each game's page in their folders: the sweep page is the table, and
    the log says why (it said they did not all replay one recorded game, though they did)."""
    from engine.jobs.outputs import sweep_report

    rows = [{"job": str(j), "radius": r} for j, r in enumerate((3, 8))]
    for row in rows:
        (tmp_path / row["job"]).mkdir()
        summary = {"games": [{"summary": "game_0000/summary.json"}], "complete": True, "stores": {"rollout": "/x"}}
        (tmp_path / row["job"] / "summary.json").write_text(json.dumps(summary))
    with caplog.at_level(logging.INFO):
        data, _ = read_report_data(sweep_report(tmp_path, rows, ["job", "radius"]))
    assert data["frames"] == 0 and len(data["table"]["rows"]) == 2
    assert "the jobs played many games each (rollout.num_envs" in caplog.text
