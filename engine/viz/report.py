"""``report.html``: a self-contained page to look at a run (and a sweep) in a browser, from disk, with no server.

The page holds everything inline (no CDN, no network): the game frames as lossless WebP sprite sheets (a vertical
strip of ``frames_per_sheet`` frames each), every saliency map quantised to uint8 per frame (its own min..max,
both kept as floats so the browser rescales it exactly) in grayscale WebP sheets, per-frame series (value, chosen
action, reward, episode end, mean and max of every map) as JSON, and the viewer: the CSS and JavaScript of
``engine/viz/assets/`` (``report.css``, ``report.js``; package data, read with :mod:`importlib.resources` so a
wheel install finds them too). The browser draws the maps over the frame on a canvas with its own colormap, so
toggling an overlay or a normalisation is instant.

The viewer reads the page's JSON block (``#report-data``) and sprite sheets (a JSON block a window:
``<script type="application/json" class="report-sheet">``), builds the controls, panels, plots and table, and
draws frame ``t`` as: the frame's rows of its sheet, copied 1:1 onto a 160x210 canvas (lossless, so with every
overlay off the canvas holds the recorded pixels exactly), then each overlay that is on: the uint8 map of frame
``t`` -> intensity in [0, 1] (per frame: ``q / 255``; whole run: ``|lo + q / 255 * (hi - lo)| / max |map|`` over
the run and all panels) -> the kind's colour with alpha ``opacity * intensity`` on a small canvas of the map's
size, drawn (bilinear) over the rows the map covers.
Decoded sheets are kept in small LRU caches (a frame sheet is ~4 MB decoded). After frame ``t`` is drawn,
``document.body.dataset.drawn`` is ``t`` (tests wait for it). No network, no libraries.

Nothing from the data ever runs: the page's Content-Security-Policy allows exactly one script, the viewer, by the
SHA-256 of its bytes (and the one style element by its hash); every other ``<script>`` is JSON that the viewer
reads; the viewer inserts every string from the data as text, never as HTML. Links (a sweep's job pages) are
paths relative to the page's directory, checked here by :func:`relative_link` to stay inside it and URL-encoded
segment by segment; the viewer again accepts only such relative URLs as an ``href``, and only WebP data URIs as
an image's ``src``.

Built by streaming: the builder reads ``frames[a:b]`` and ``maps[k][a:b]`` one window of ``frames_per_sheet``
frames at a time, from anything that slices along time and has ``.shape`` (numpy arrays, torch tensors, zarr
arrays, or a :class:`WindowedArray` over a reader such as a store), encodes that window and appends it to the
file. The page is written to a temporary file and renamed, so a reader never sees half a page.

Size: Atari frames are flat colours and repeat within a sheet; lossless WebP holds them in 20-70 bytes a frame
(measured on sheets of 32 frames of Pong, Breakout, Space Invaders). Perturbation maps take about 0.5 kB a frame,
Jacobian maps about 3.3 kB (they are noisy): about 11 kB a frame with all four kinds, after base64. A window
whose sheets (frames and maps together) exceed ``max_bytes_per_frame`` a frame (noise-like content) is re-encoded
lossy, quality stepping down, and the page says which windows are lossy; no frame is ever dropped.

Shapes: frames uint8 ``(T, 210, 160, 3)``; maps float ``(T, H, W)`` (80x80 maps of the 2017 agents cover frame
rows 35..194, any other size the whole frame: :func:`engine.viz.rendering.map_rows`); series ``(T,)``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from PIL import Image

from ..core.errors import EngineError
from ..core.files import atomic_write
from ..core.preprocessing import FRAME_SHAPE
from ..core.settings import MAP_KINDS
from .rendering import map_rows

log = logging.getLogger(__name__)

__all__ = [
    "MAP_KINDS",
    "Panel",
    "WindowedArray",
    "write_report",
    "write_sweep_report",
    "read_report_data",
    "decode_sheet",
    "sheet_size",
    "relative_link",
    "content_security_policy",
]

# every method's maps (engine.core.settings.map_names): the 2017 method's actor and critic, the Jacobian's,
# occlusion's, RISE's, LIME's and SARFA's (an actor map only)
MAP_LABELS = {
    "actor": "actor (perturbation)",
    "critic": "critic (perturbation)",
    "jacobian_actor": "actor (Jacobian)",
    "jacobian_critic": "critic (Jacobian)",
    "occlusion_actor": "actor (occlusion)",
    "occlusion_critic": "critic (occlusion)",
    "rise_actor": "actor (RISE)",
    "rise_critic": "critic (RISE)",
    "lime_actor": "actor (LIME)",
    "lime_critic": "critic (LIME)",
    "sarfa_actor": "actor (SARFA)",
}
FRAMES_PER_SHEET = 32  # 32 x 210 rows: well inside WebP's 16383-pixel limit, and few decodes in the browser
MAX_BYTES_PER_FRAME = 24_000  # frames + all maps, before base64: 2,000 frames stay under 50 MB with base64
LOSSY_QUALITIES = (90, 75, 50, 30)  # tried in turn for a sheet over the budget (noise-like content)
_WEBP_MAX = 16383


@functools.cache
def viewer_asset(name: str) -> str:
    """The text of ``engine/viz/assets/<name>`` (``report.js``, ``report.css``), inlined into every page."""
    return (resources.files(__package__) / "assets" / name).read_text(encoding="utf-8")


class WindowedArray:
    """An array-like over a reader of time windows: ``read(start, stop)`` returns the rows ``start..stop-1``.

    Lets the builder stream from any store (a store's ``read(start, stop)``) without knowing it. Shape: ``shape``
    (the first axis is time); only slices with step 1 are supported."""

    def __init__(self, read: Callable[[int, int], object], shape: Sequence[int]):
        if not callable(read):
            raise TypeError(f"read must be a function read(start, stop), got {type(read).__name__}")
        self.read = read
        self.shape = tuple(int(s) for s in shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a WindowedArray is read by time windows only: use array[start:stop]")
        start, stop, _ = index.indices(self.shape[0])
        return _numpy(self.read(start, max(start, stop)))


@dataclass
class Panel:
    """One set of maps shown over the frames: a job (or the run). ``maps``: kind -> array-like ``(T, H, W)``;
    ``link``: the path of a page to open for this job (sweeps), relative to the directory of the page written (a
    path, not a URL: :func:`relative_link` encodes it, and drops it if it leaves that directory); ``label``: what
    the panel's title says (shown as text)."""

    name: str
    maps: dict = field(default_factory=dict)
    label: str = ""
    link: str | None = None


# ---------------------------------------------------------------------------------------------- links ---


def _link_problem(link: str, root: Path) -> str | None:
    """Why ``link`` (a path relative to ``root``) cannot be a link of a page in ``root``, or None."""
    if not link:
        return "it is empty"
    if "\x00" in link:
        return "it holds a NUL character"
    try:
        parts = urlsplit(link)
    except ValueError as error:
        return f"it does not parse as a URL path ({error})"
    if parts.scheme or parts.netloc:
        return "it is a URL with a scheme or a host, not a path relative to the page"
    if link.startswith("/"):
        return "it is an absolute path, not one relative to the page"
    norm = posixpath.normpath(link)
    if norm == ".":
        return "it is the page's own directory"
    if norm == ".." or norm.startswith("../"):
        return "its '..' leaves the page's directory"
    try:
        top = root.resolve()
        target = (top / link).resolve()  # follows symlinks, so a link inside that points outside is caught
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop
        return f"it cannot be resolved ({error})"
    if not target.is_relative_to(top):
        return f"it resolves to {target}, outside the page's directory {top} (a symlink pointing out)"
    return None


def relative_link(link, root, owner: str = "") -> str | None:
    """The ``href`` of ``link``, a path relative to ``root`` (the directory of the page being written), or None
    where it could lead anywhere else; a dropped link is logged (``owner``: whose link it is, for the message).

    Dropped: empty links, URLs with a scheme or host (``javascript:``, ``data:``, ``file://host/``, ``//host``),
    absolute paths, a ``..`` that leaves ``root``, and paths that resolve outside ``root`` through a symlink. Kept:
    the normalised path with each segment URL-encoded (``quote(segment, safe="")``), so a folder named
    ``a#b?c%d`` or ``"><img ...>`` is a link to that folder, never a fragment, a query or markup, and the result
    holds only letters, digits, ``_.-~``, ``%`` escapes and ``/`` (no ``:``, so no scheme)."""
    if isinstance(link, os.PathLike):
        link = os.fspath(link)
    if not isinstance(link, str):
        raise EngineError(
            f"a link must be a path (str) relative to the page's directory, got {type(link).__name__} {link!r}"
        )
    problem = _link_problem(link, Path(root))
    if problem:
        log.warning("report: %slink %r dropped: %s", f"{owner}: " if owner else "", link, problem)
        return None
    # surrogateescape: a file name that is not UTF-8 (Linux allows any bytes) keeps its bytes, percent-encoded
    segments = posixpath.normpath(link).split("/")
    return "/".join(quote(segment, safe="", errors="surrogateescape") for segment in segments)


# --------------------------------------------------------------------------------------------- inputs ---


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported here)
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _length(x, name: str) -> int:
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) == 0:
        raise EngineError(
            f"{name} must be an array with time as its first axis (numpy, torch, zarr), got "
            f"{type(x).__name__}: pass an array, or a WindowedArray over a reader"
        )
    return int(shape[0])


def check_steps(steps, total: int) -> tuple[int, int]:
    """``steps`` as ``(start, stop)`` of a run of ``total`` steps: ``None`` is all of them; otherwise two integers
    with ``0 <= start < stop <= total``.

    >>> check_steps(None, 10), check_steps([2, 5], 10)
    ((0, 10), (2, 5))
    """
    if steps is None:
        return 0, total
    pair = list(steps) if isinstance(steps, (list, tuple)) else None
    if not (
        pair is not None
        and len(pair) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)
        and 0 <= pair[0] < pair[1] <= total
    ):
        raise EngineError(
            f"steps must be [start, stop] with 0 <= start < stop <= {total} (the run's steps), got {steps!r}"
        )
    return int(pair[0]), int(pair[1])


def _check_inputs(frames, panels: list[Panel], series: dict) -> int:
    n = _length(frames, "frames")
    if n < 1:
        raise EngineError("frames is empty: a report needs at least one frame")
    if tuple(frames.shape[1:]) != FRAME_SHAPE:
        raise EngineError(
            f"frames must be raw ALE frames (T, 210, 160, 3) uint8, got shape {tuple(frames.shape)}: "
            "pass the rollout's frames, not its observations"
        )
    for panel in panels:
        for kind, maps in panel.maps.items():
            if kind not in MAP_KINDS:
                raise EngineError(f"unknown map kind {kind!r} in panel {panel.name!r}: use {', '.join(MAP_KINDS)}")
            shape = tuple(getattr(maps, "shape", ()))
            if len(shape) != 3 or min(shape[1:]) < 2:
                raise EngineError(f"{panel.name}: {kind} maps must be (T, H, W), got shape {shape}")
            if shape[0] != n:
                raise EngineError(f"{panel.name}: {kind} holds {shape[0]} maps for {n} frames: pass one map per frame")
    for name, values in series.items():
        if values is not None and _length(values, name) != n:
            raise EngineError(f"{name} holds {_length(values, name)} values for {n} frames: pass one per frame")
    return n


# ------------------------------------------------------------------------------------------- encoding ---


def _webp(image: np.ndarray, lossless: bool, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    mode = "L" if image.ndim == 2 else "RGB"
    # lossless: method 1 at effort ("quality") 10 is 2x faster than method 4 at 50 and within 3% of its size on
    # Atari frames and maps (measured on Pong frames, perturbation and Jacobian maps)
    Image.fromarray(np.ascontiguousarray(image), mode).save(
        buffer, format="WEBP", lossless=lossless, quality=10 if lossless else quality, method=1 if lossless else 4
    )
    return buffer.getvalue()


def _data_uri(data: bytes) -> str:
    return "data:image/webp;base64," + base64.b64encode(data).decode("ascii")


def quantise(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float maps ``(N, H, W)`` -> uint8 maps scaled to each map's own ``min..max``, and those ``(N,)`` minima
    and maxima (float64): ``map ~= lo + q / 255 * (hi - lo)``, within half a step of 255."""
    maps = np.asarray(maps, dtype=np.float64)
    if not np.isfinite(maps).all():
        raise EngineError("saliency maps hold NaN or infinite values: fix the saliency computation (or nan_to_num it)")
    lo, hi = maps.min(axis=(1, 2)), maps.max(axis=(1, 2))
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((maps - lo[:, None, None]) / span[:, None, None] * 255.0).astype(np.uint8)
    return q, lo, hi


def _strip(stack: np.ndarray) -> np.ndarray:
    """(N, H, W[, 3]) -> a vertical strip (N * H, W[, 3]): frame i at rows i*H..(i+1)*H-1."""
    return stack.reshape(-1, *stack.shape[2:])


def _encode_window(strips: list[np.ndarray], budget: float) -> tuple[list[bytes], bool]:
    """Every strip of one window as WebP: lossless if all of them together fit ``budget`` bytes, else all lossy
    at the first quality of LOSSY_QUALITIES that fits (the last one if none does). Returns (encoded, lossy)."""
    encoded = [_webp(strip, lossless=True) for strip in strips]
    if sum(map(len, encoded)) <= budget:
        return encoded, False
    for quality in LOSSY_QUALITIES:
        encoded = [_webp(strip, lossless=False, quality=quality) for strip in strips]
        if sum(map(len, encoded)) <= budget:
            break
    return encoded, True


def sheet_size(uri: str) -> tuple[int, int]:
    """``(width, rows)`` of a sheet from its data URI, read from the WebP header (nothing decoded)."""
    return Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))).size


def decode_sheet(uri: str) -> np.ndarray:
    """A sheet's pixels from its data URI (for tests and tools): uint8 ``(rows, W, 3)``."""
    head, _, payload = uri.partition(",")
    if head != "data:image/webp;base64":
        raise EngineError(f"not a WebP data URI: {head[:40]!r}")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))


# ----------------------------------------------------------------------------------------------- page ---


def _finite(value):
    """``value`` with every NaN or infinite float replaced by None (JSON has neither; the browser would refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_script(value) -> str:
    # inside a <script> data block, "</script>" or "<!--" in a setting would end the element or change how it is
    # parsed: escape every "<" (JSON allows it)
    return json.dumps(_finite(value), default=str, allow_nan=False).replace("<", "\\u003c")


def _clean(values: np.ndarray | list[Any]) -> list[float | None]:
    """Floats for JSON: NaN and infinities become null (JSON has neither)."""
    values = np.asarray(values, dtype=np.float64)
    return [None if not math.isfinite(v) else float(v) for v in values.tolist()]


def _inline(name: str, element: str) -> str:
    """The asset ``name`` as the text of an inline ``<element>``, refused where the HTML parser would not keep it
    byte for byte (its CSP hash would not match) or where it would end the element early."""
    text = viewer_asset(name)
    lowered = text.lower()
    for bad, why in (
        ("\x00", "a NUL character (the parser replaces it)"),
        ("\r", "a carriage return (the parser turns it into a newline)"),
        (f"</{element}", f"'</{element}' (it ends the element)"),
        ("<!--", "'<!--' (it changes how the parser reads the element)"),
    ):
        if bad in lowered:
            raise EngineError(f"engine/viz/assets/{name} holds {why}: it cannot be inlined into report.html")
    return text


def _sha256_source(text: str) -> str:
    """The CSP source that allows the inline element whose text is ``text``: its SHA-256 over UTF-8, base64."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def content_security_policy() -> str:
    """The page's Content-Security-Policy: nothing from the network, no inline script but the viewer (its hash).

    Styles: the one style element is allowed by its hash too, so no style from the data applies either; the
    viewer sets styles through CSSOM (``element.style``), which CSP does not restrict. Images: the sheets' data
    URIs. ``base-uri`` and ``form-action`` are not covered by ``default-src``: both are closed too."""
    return (
        f"default-src 'none'; img-src data:; style-src {_sha256_source(_inline('report.css', 'style'))}; "
        f"script-src {_sha256_source(_inline('report.js', 'script'))}; base-uri 'none'; form-action 'none'"
    )


def _page_head(title: str) -> str:
    # a file name that is not UTF-8 (Linux allows any bytes) reaches the title as surrogates: shown as U+FFFD
    title = title.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{content_security_policy()}">'
        '<link rel="icon" href="data:,">'  # no favicon request (no network, no console error)
        f"<title>{html.escape(title)}</title><style>{_inline('report.css', 'style')}</style></head>\n<body>\n"
        "<noscript>This page needs JavaScript to show the frames and plots.</noscript>\n"
    )


_SHEET_OPEN = '<script type="application/json" class="report-sheet">'
_DATA_OPEN = '<script type="application/json" id="report-data">'


def _write_page(
    path,
    frames,
    panels: list[Panel],
    series: dict,
    meta: dict,
    table: dict | None,
    frames_per_sheet: int,
    max_bytes_per_frame: float,
    steps: Sequence[int] | None = None,
) -> Path:
    """Stream the page to ``path`` (atomically). ``frames`` None: a page with the table and links only. ``steps``:
    the rows ``start..stop-1`` of every array make the page (default: all of them)."""
    if not (isinstance(frames_per_sheet, int) and 1 <= frames_per_sheet <= _WEBP_MAX // FRAME_SHAPE[0]):
        raise EngineError(
            f"frames_per_sheet must be in 1..{_WEBP_MAX // FRAME_SHAPE[0]} (WebP's size limit), "
            f"got {frames_per_sheet!r}"
        )
    if not (isinstance(max_bytes_per_frame, (int, float)) and max_bytes_per_frame > 0):
        raise EngineError(f"max_bytes_per_frame must be a number > 0, got {max_bytes_per_frame!r}")
    path = Path(path)
    total = 0 if frames is None else _check_inputs(frames, panels, series)
    first, end = check_steps(steps, total)
    n = end - first
    kinds = [k for k in MAP_KINDS if any(k in p.maps for p in panels)]
    # the overlays on when the page opens: the first method's (the 2017 method's actor and critic whenever they
    # are there); the other methods' toggles start off
    method = kinds[0].rpartition("_")[0] if kinds else ""
    shown = [k for k in kinds if k.rpartition("_")[0] == method]
    if table is not None:  # each job's page: a path inside this page's directory, or no link (logged)
        hrefs = {job: relative_link(link, path.parent, f"job {job!r}") for job, link in table["links"].items()}
        table = dict(table, links={job: href for job, href in hrefs.items() if href is not None})
    data: dict = dict(
        meta,
        frames=n,
        first_step=first,
        total_steps=total,
        frames_per_sheet=frames_per_sheet,
        frame_shape=list(FRAME_SHAPE),
        panels=[],
        kinds=kinds,
        shown=shown,
        labels={k: MAP_LABELS[k] for k in kinds},
        lossy_sheets=[],
        table=table,
        series={},
    )
    stats: list[dict[str, dict[str, list[float | None]]]] = [
        {k: {"mean": [], "max": [], "lo": [], "hi": []} for k in p.maps} for p in panels
    ]
    columns: dict[str, list[Any]] = {name: [] for name, values in series.items() if values is not None}
    with atomic_write(path, ".html") as tmp:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(_page_head(meta.get("title", "report")))
            for sheet, start in enumerate(range(first, end, frames_per_sheet)):
                stop = min(end, start + frames_per_sheet)
                window = _numpy(frames[start:stop])
                if window.shape != (stop - start, *FRAME_SHAPE) or window.dtype != np.uint8:
                    raise EngineError(
                        f"frames[{start}:{stop}] gave {window.dtype} {window.shape}, expected uint8 "
                        f"{(stop - start, *FRAME_SHAPE)}: pass the raw uint8 frames"
                    )
                strips = [_strip(window)]
                targets: list[tuple[int, str] | None] = [None]
                for i, panel in enumerate(panels):
                    for kind, maps in panel.maps.items():
                        block = _numpy(maps[start:stop])
                        if block.shape != (stop - start, *panel.maps[kind].shape[1:]):
                            raise EngineError(
                                f"{panel.name}: {kind}[{start}:{stop}] gave shape {block.shape}, "
                                f"expected {(stop - start, *panel.maps[kind].shape[1:])}"
                            )
                        q, lo, hi = quantise(block)
                        s = stats[i][kind]
                        s["mean"] += _clean(block.astype(np.float64).mean(axis=(1, 2)))
                        s["max"] += _clean(hi)
                        s["lo"] += _clean(lo)
                        s["hi"] += _clean(hi)
                        strips.append(_strip(q))
                        targets.append((i, kind))
                encoded, lossy = _encode_window(strips, max_bytes_per_frame * (stop - start))
                if lossy:
                    data["lossy_sheets"].append(sheet)
                for name in columns:
                    columns[name] += _numpy(series[name][start:stop]).reshape(stop - start).tolist()
                # data, not code: a JSON block the viewer reads (CSP lets only the viewer's own script run)
                entry: dict = {"frames": None, "maps": [{} for _ in panels]}
                for target, e in zip(targets, encoded):
                    if target is None:
                        entry["frames"] = _data_uri(e)
                    else:
                        entry["maps"][target[0]][target[1]] = _data_uri(e)
                out.write(_SHEET_OPEN + _json_script(entry) + "</script>\n")
            for i, panel in enumerate(panels):
                link = panel.link and relative_link(panel.link, path.parent, f"panel {panel.name!r}")
                data["panels"].append(
                    dict(
                        name=str(panel.name),
                        label=str(panel.label or panel.name),
                        link=link or None,
                        maps={
                            k: dict(
                                shape=list(panel.maps[k].shape[1:]),
                                rows=list(map_rows(panel.maps[k].shape)),
                                **stats[i][k],
                            )
                            for k in panel.maps
                        },
                    )
                )
            for name, values in columns.items():
                data["series"][name] = (
                    _clean(values)
                    if name in ("values", "rewards")
                    else [int(v) for v in values]
                    if name == "actions"
                    else [bool(v) for v in values]
                )
            if data["lossy_sheets"]:
                log.warning(
                    "report %s: %d sheets over %d bytes a frame were stored lossy",
                    path,
                    len(data["lossy_sheets"]),
                    max_bytes_per_frame,
                )
            out.write(_DATA_OPEN + _json_script(data) + "</script>\n")
            out.write("<script>" + _inline("report.js", "script") + "</script>\n</body></html>\n")
    return path


def write_report(
    path,
    frames,
    maps: dict,
    *,
    values=None,
    actions=None,
    rewards=None,
    dones=None,
    action_names: Sequence[str] = (),
    title: str = "",
    settings: dict | None = None,
    checkpoint: str = "",
    frames_per_sheet: int = FRAMES_PER_SHEET,
    max_bytes_per_frame: float = MAX_BYTES_PER_FRAME,
    steps: Sequence[int] | None = None,
    value_label: str = "value",
) -> Path:
    """Write the viewer of one run to ``path`` (``report.html``) and return the path.

    Args:
        frames: uint8 ``(T, 210, 160, 3)``, any array-like sliced along time (read ``frames_per_sheet`` at a time).
        maps: kind (:data:`MAP_KINDS`: ``actor``, ``critic``, ``jacobian_actor``, ``jacobian_critic``,
            ``occlusion_actor``, ..., ``sarfa_actor``) -> float ``(T, H, W)``; whichever the run has. The first
            method's overlays are on when the page opens, the others' toggles off.
        values, rewards: ``(T,)`` floats; actions: ``(T,)`` ints; dones: ``(T,)`` bools (episode ended there).
        action_names: the game's action meanings, indexed by action.
        settings: JSON-able settings shown on the page (the job's configuration); checkpoint: path or name.
        max_bytes_per_frame: sheets above this (frames and maps together, before base64) are stored lossy.
        steps: ``[start, stop]``: the page shows steps ``start..stop-1`` of the arrays, numbered as in the run (a
            page holds about 3-11 kB a frame: a long run's whole page would not open in a browser); default: all.
        value_label: what ``values`` are, on the page (a game another agent played: that agent's values).
    """
    panel = Panel("run", dict(maps), label=title or "run")
    meta = dict(
        kind="run",
        value_label=value_label,
        title=title or "saliency report",
        action_names=list(action_names),
        settings=settings or {},
        checkpoint=str(checkpoint),
    )
    series = dict(values=values, actions=actions, rewards=rewards, dones=dones)
    return _write_page(path, frames, [panel], series, meta, None, frames_per_sheet, max_bytes_per_frame, steps)


def write_sweep_report(
    path,
    rows: list[dict],
    columns: Sequence[str],
    *,
    frames=None,
    panels: Sequence[Panel] = (),
    values=None,
    actions=None,
    rewards=None,
    dones=None,
    action_names: Sequence[str] = (),
    title: str = "",
    settings: dict | None = None,
    links: dict[str, str] | None = None,
    frames_per_sheet: int = FRAMES_PER_SHEET,
    max_bytes_per_frame: float = MAX_BYTES_PER_FRAME,
    steps: Sequence[int] | None = None,
) -> Path:
    """Write a sweep's page to ``path``: ``rows`` (summary.csv's rows, ``columns`` its header) as a sortable
    table, with a link per job (``links``: job -> the path of its report relative to ``path``'s directory, e.g.
    ``"<job>/report.html"``, not URL-encoded: :func:`relative_link` encodes it, and drops one that leaves that
    directory); given the ``frames`` of the one game all jobs replayed, also every ``panels`` entry (one per job,
    its maps) side by side on the same frame, with the recorded series (``values``..., ``steps`` as in
    :func:`write_report`). Every string (job names, columns, cells, labels, settings) is shown as text."""
    columns = list(columns)
    table = dict(columns=columns, rows=[[row.get(c) for c in columns] for row in rows], links=dict(links or {}))
    meta = dict(
        kind="sweep",
        title=title or "sweep report",
        action_names=list(action_names),
        settings=settings or {},
        checkpoint="",
    )
    if frames is None:
        if panels:
            raise EngineError("panels need the frames they are drawn over: pass frames= (the shared rollout)")
        return _write_page(path, None, [], {}, meta, table, frames_per_sheet, max_bytes_per_frame)
    series = dict(values=values, actions=actions, rewards=rewards, dones=dones)
    return _write_page(path, frames, list(panels), series, meta, table, frames_per_sheet, max_bytes_per_frame, steps)


def read_report_data(path) -> tuple[dict, dict]:
    """``(data, sheets)`` of a page :func:`write_report` wrote: the JSON block, and the sheets' data URIs
    (``{"frames": [...], "maps": [{kind: [...]}, ...]}``), for tests and tools; reads the page's text, runs nothing."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index(_DATA_OPEN) + len(_DATA_OPEN)
    data = json.loads(text[start : text.index("</script>", start)])
    sheets: dict[str, Any] = {"frames": [], "maps": [{k: [] for k in panel["maps"]} for panel in data["panels"]]}
    at = text.find(_SHEET_OPEN)
    while at != -1:
        first = at + len(_SHEET_OPEN)
        end = text.index("</script>", first)
        block = json.loads(text[first:end])
        sheets["frames"].append(block["frames"])
        for panel, maps in zip(sheets["maps"], block["maps"]):
            for kind, uri in maps.items():
                panel[kind].append(uri)
        at = text.find(_SHEET_OPEN, end)
    return data, sheets
