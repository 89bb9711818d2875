"""What a job writes once its game is scored, read back from its stores one chunk or window at a time: the
statistics (accumulated chunk by chunk, :class:`MapStatistics`), metrics, arrays, overlays, movie, figures, report and
``summary.json`` (:func:`finish_job`), and the page of a whole sweep (:func:`sweep_report`). A job owns the files it
writes into its output directory (:data:`OWNED_FILES`) and removes an earlier run's only once its own results are
ready (:func:`clear_owned_outputs`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from ..core.files import atomic_write
from ..core.policy import Policy, index_state
from ..core.saliency import compute_saliency
from ..core.settings import MAP_KINDS, map_names, selected_methods
from ..env.rollout import Rollout
from ..policies.registry import (
    BUILTIN_PREFIX,
    known_checkpoint,
)
from ..storage.arrays import save_arrays
from ..storage.keys import place
from ..storage.layout import ROLLOUT_FIELDS
from ..storage.store import RolloutStore, SaliencyStore
from .config import JobConfig, engine_saliency
from .prepare import PreparedJob
from .score import scored_states, uses_recorded_states

if TYPE_CHECKING:
    from ..viz.report import Panel, WindowedArray

log = logging.getLogger(__name__)


# the files a job writes into its output directory (a saliency store there is resumable and checks its settings)
OWNED_FILES = ("saliency.mp4", "saliency.npz", "rollout.npz", "summary.json", "report.html")


OWNED_PATTERNS = ("frame_[0-9][0-9][0-9][0-9][0-9].png", "jacobian_vs_perturbation_[0-9][0-9][0-9][0-9][0-9].png")


def clear_owned_outputs(out_dir: Path) -> list[Path]:
    """Remove what an earlier job wrote into ``out_dir`` (the files a job owns, nothing else), so that a rerun
    never leaves a mix of two runs' results; returns the paths removed."""
    found = [out_dir / name for name in OWNED_FILES if (out_dir / name).is_file()]
    for pattern in OWNED_PATTERNS:
        found += sorted(p for p in out_dir.glob(pattern) if p.is_file())
    for path in found:
        path.unlink()
    if found:
        log.warning(
            "removed %d files of an earlier run from %s (%s)",
            len(found),
            out_dir,
            ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else ""),
        )
    return found


class MapStatistics:
    """Mean and max of each kind of map, accumulated chunk by chunk (a running float64 sum, count and max), so a
    long store job never holds all its maps at once."""

    KEYS = MAP_KINDS  # every method's maps (engine.core.settings.map_names)

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.maxima: dict[str, float] = {}

    def update(self, maps: dict) -> None:
        for key in self.KEYS:
            if key not in maps:
                continue
            values = torch.as_tensor(maps[key]).double()
            if values.numel() == 0:
                continue
            self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
            self.counts[key] = self.counts.get(key, 0) + values.numel()
            self.maxima[key] = max(self.maxima.get(key, -math.inf), float(values.max()))

    def result(self) -> dict[str, float]:
        stats = {}
        for key in self.KEYS:
            if self.counts.get(key):
                stats[f"{key}_mean"] = self.sums[key] / self.counts[key]
                stats[f"{key}_max"] = self.maxima[key]
        return stats


def map_statistics(maps: dict) -> dict[str, float]:
    """Mean and max of each kind of map, for the sweep summary."""
    stats = MapStatistics()
    stats.update(maps)
    return stats.result()


def streamed_statistics(sstore) -> dict[str, float]:
    """:class:`MapStatistics` of a saliency store's marked chunks, read chunk by chunk: memory stays bounded by one
    chunk."""
    stats = MapStatistics()
    keys = tuple(k for k in MapStatistics.KEYS if k in sstore.store.layout)
    for k in range(len(sstore.bounds)):
        if keys and sstore.store.has(k):
            stats.update(sstore.store.read(k, keys))
    return stats.result()


RENDER_WINDOW = 256  # frames whose overlays are made at once for the movie and stills
# maps (frames times the kinds of maps of every panel) a report shows unless output.report_steps says which frames: a
# map takes 0.5-3.3 kB of the page, and 10,000 frames of four kinds measured 135 MB (docs/viewer.md), where a browser
# still opens a page quickly
REPORT_MAX_MAPS = 40_000


def render_outputs(config: JobConfig, out_dir: Path, agent, rstore, sstore, recorded_states: bool) -> dict[str, Path]:
    """Overlays of every frame of complete stores -> movie and stills, and the Jacobian-vs-perturbation figure of
    one frame (where the 2017 method ran). Movie frames are labelled with the action taken, by name. The movie and
    stills show the first method's maps (in the order of ``engine.core.settings.METHODS``: the 2017 method's
    ``actor`` and ``critic`` whenever it ran; SARFA's actor map alone where it is first), made :data:`RENDER_WINDOW`
    frames at a time (the clean style's scales from passes over the maps), so memory does not grow with the
    rollout; the figure reads its frame."""
    from ..viz import rendering

    r, o, written = config.render, config.output, {}
    n, names = rstore.num_steps, tuple(rstore.identity["action_names"])
    taken = [f"  {name_of(a, names)}" for a in rstore.store.read_range(0, n, ("actions",))["actions"].tolist()]
    methods = selected_methods(config.saliency.method)
    stills = [t for t in o.stills if t < n]
    for t in sorted(set(o.stills) - set(stills)):  # the rollout ended early (rollout.max_episodes)
        log.warning("output.stills: frame %d was not played (the rollout ended after %d frames)", t, n)
    if o.movie or stills:
        shown = map_names(methods)[methods[0]]  # (actor,) or (actor, critic) of the first method
        every = [(a, min(a + RENDER_WINDOW, n)) for a in range(0, n, RENDER_WINDOW)]
        windows = every if o.movie else [w for w in every if any(w[0] <= t < w[1] for t in stills)]

        def maps_of(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
            maps = {k: torch.from_numpy(v) for k, v in sstore.store.read_range(a, b, shown).items()}
            actor = maps[shown[0]]
            return actor, maps[shown[1]] if len(shown) > 1 else torch.zeros_like(actor)

        def kind(name: str) -> Callable[[], Iterator[torch.Tensor]]:
            """One kind of map, window by window (a pass of the clean style's scale)."""
            return lambda: (torch.from_numpy(sstore.store.read_range(a, b, (name,))[name]) for a, b in every)

        if r.style == "paper":  # each frame's overlay depends on that frame's maps alone
            actor_gain, critic_gain = r.actor_gain, r.critic_gain
            if actor_gain is None or critic_gain is None:
                default_actor, default_critic = rendering.paper_gains(config.env.id)
                actor_gain = default_actor if actor_gain is None else actor_gain
                critic_gain = default_critic if critic_gain is None else critic_gain

            def overlay(frames: torch.Tensor, actor: torch.Tensor, critic: torch.Tensor) -> torch.Tensor:
                return rendering.paper_overlay_pair(frames, actor, critic, actor_gain, critic_gain, r.blur_sigma)
        else:  # one scale per kind for the whole movie: a percentile of all its maps, streamed
            # no critic map (SARFA's actor alone): a scale of 1, as movie_scales gives all-zero maps
            scales = [rendering.streamed_movie_scale(kind(name), r.percentile) for name in shown] + [1.0]

            def overlay(frames: torch.Tensor, actor: torch.Tensor, critic: torch.Tensor) -> torch.Tensor:
                return rendering.clean_overlay(frames, actor, critic, scales[0], scales[1], alpha=r.alpha)

        def overlays() -> Iterator[torch.Tensor]:
            """The overlays of each window in turn (one window's frames and maps in memory), its stills saved."""
            for a, b in windows:
                frames = torch.from_numpy(rstore.store.read_range(a, b, ("frames",))["frames"])
                images = overlay(frames, *maps_of(a, b))
                for t in stills:
                    if a <= t < b:
                        written[f"still_{t}"] = rendering.save_png(out_dir / f"frame_{t:05d}.png", images[t - a])
                yield images

        if o.movie:
            labels = [f"{config.env.id}  frame {t}{taken[t]}" for t in range(n)]
            written["movie"] = rendering.write_movie(
                out_dir / "saliency.mp4",
                overlays(),
                fps=o.fps,
                labels=labels,
                scale=o.scale,
                progress=config.progress,
                num_frames=n,
            )
        else:
            for _ in overlays():
                pass
    t = o.comparison_frame if o.comparison_frame is not None else n // 2
    if o.comparison and t >= n:
        log.warning("output.comparison_frame: frame %d was not played (the rollout ended after %d frames)", t, n)
    elif o.comparison and "perturbation" in methods:
        maps = {k: torch.from_numpy(v[0]) for k, v in sstore.read(t, t + 1).items()}
        jac = maps.get("jacobian_actor"), maps.get("jacobian_critic")
        if jac[0] is None:  # no Jacobian maps stored: this frame's, on the states its maps were scored with
            from ..core.jacobian import jacobian_saliency

            k = next(k for k, (a, b) in enumerate(sstore.bounds) if a <= t < b)
            _, part, states = next(
                scored_states(agent, rstore, sstore.bounds, config.saliency.state_alignment, recorded_states, [k])
            )
            i = t - sstore.bounds[k][0]
            one = jacobian_saliency(agent, part.observations[i : i + 1], index_state(states, slice(i, i + 1)))
            jac = (one.actor[0].detach().cpu(), one.critic[0].detach().cpu())
        frame = torch.from_numpy(rstore.store.read_range(t, t + 1, ("frames",))["frames"][0])
        written["comparison"] = rendering.comparison_figure(
            out_dir / f"jacobian_vs_perturbation_{t:05d}.png",
            frame,
            jac[0],
            jac[1],
            maps["actor"],
            maps["critic"],
            title=f"{config.env.id}, frame {t}{taken[t]}: Jacobian vs perturbation saliency",
        )
    return {k: Path(v) for k, v in written.items()}


def name_of(action: int, names) -> str:
    """An action's name (``NOOP``, ``FIRE``, ... from the environment), or its index where none is known."""
    return names[action] if action < len(names) else str(action)


def finish_job(
    config: JobConfig,
    prepared: PreparedJob,
    rollout_root,
    saliency_root,
    rstore: RolloutStore,
    sstore: SaliencyStore,
    timing: dict,
    scored: int,
) -> dict[str, Path | str]:
    """The end of a game's job (:func:`engine.jobs.game.run_game_job`), once its game is recorded and scored
    (``scored`` frames by this job, ``timing`` as :func:`engine.jobs.game.record_and_score` returns it): the statistics, metrics, arrays, overlays, movie, figures, report and
    summary.json in ``config.output.dir``, read back from the stores. Returns the paths written."""
    agent, out_dir, st = prepared.agent, Path(config.output.dir), config.store
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings = list(prepared.warnings)
    sha = prepared.checkpoint_sha256
    saliency_s = timing["saliency_seconds"]
    log.info(
        "scored %d frames into %s in %.1f s (%.3f s per frame%s)",
        scored,
        place(saliency_root),
        saliency_s,
        saliency_s / scored if scored else 0.0,
        f"; {timing['waited_seconds']:.1f} s more waiting for the recording" if timing["overlapped"] else "",
    )
    recorded_states = uses_recorded_states(agent, rstore, sha)
    metrics = job_metrics(config, agent, rstore, sstore, recorded_states) if sstore.complete else {}
    m = config.metrics
    if not sstore.complete and (m.deletion_insertion or m.objects or m.stability or m.sanity):
        log.info("the metrics wait for the saliency store to be complete (the other shards' chunks)")
    series = rstore.store.read_range(0, rstore.num_steps, ("actions", "rewards", "dones"))
    names = rstore.identity["action_names"]
    stores = {"rollout_store": str(rollout_root), "saliency_store": str(saliency_root)} if st.rollout else {}
    statistics = streamed_statistics(sstore)
    methods = selected_methods(config.saliency.method)
    for warning in zero_map_warnings(statistics, methods):
        log.warning("%s", warning)
        warnings.append(warning)
    settings = dict(
        config={
            **asdict(config),
            "agent": agent_settings(config, agent),
            # the chunking the game was recorded with (a complete store is replayed in its own)
            "store": {**asdict(config.store), "chunk_steps": rstore.identity.get("chunk_steps", st.chunk_steps)},
        },
        checkpoint=str(prepared.checkpoint),
        checkpoint_sha256=sha,
        **stores,
        frames=rstore.num_steps,
        **({"metrics": metrics} if metrics else {}),
        frames_scored=scored,
        complete=sstore.complete,
        **timing,
        seconds_per_frame=saliency_s / scored if scored else None,
        episode_returns=episode_returns(series["rewards"], series["dones"]),
        pipeline=rstore.identity["pipeline"],
        action_names=list(names),
        action_counts=action_counts(series["actions"], names),
        warnings=warnings,
        methods=list(methods),  # the methods that ran, and the arrays that hold each one's maps
        maps={method: list(kinds) for method, kinds in map_names(methods).items()},
        **statistics,
    )
    clear_owned_outputs(out_dir)  # the job has run: the earlier run's files go now, before this one's are written
    written: dict[str, Path | str] = {}
    if st.rollout:  # then both stores are paths or URLs, never memory stores
        written.update(cast("dict[str, Path | str]", {"rollout_store": rollout_root, "saliency_store": saliency_root}))
    if not st.rollout and config.output.arrays:  # the memory stores go with the job: their arrays stay
        played = rstore.read()
        arrays = {name: getattr(played, name) for name in ROLLOUT_FIELDS}
        written["rollout"] = save_arrays(
            out_dir / "rollout.npz", {**arrays, **{f"state_{i}": s for i, s in enumerate(played.states)}}, settings
        )
        written["saliency"] = save_arrays(out_dir / "saliency.npz", sstore.read(), settings)
    if sstore.complete:
        written.update(render_outputs(config, out_dir, agent, rstore, sstore, recorded_states))
        if config.output.report:  # streamed from the stores, one window of frames at a time
            kinds = sum(kind in sstore.store.layout for kind in MAP_KINDS)
            steps, too_long = report_steps(config.output.report_steps, rstore.num_steps, kinds)
            if too_long:
                log.warning("%s", too_long)
                warnings.append(too_long)
            written["report"] = job_report(out_dir / "report.html", config, settings, rstore, sstore, steps)
    elif config.output.report or config.output.movie or config.output.stills:
        log.info(
            "the movie, stills and report.html wait for the saliency store to be complete (the other shards' chunks)"
        )
    return _write_summary(out_dir, settings, written)


def agent_kind(agent: Policy) -> str:
    """The kind of agent: ``greydanus2017``, ``sb3``, ``cleanrl`` or ``module`` (a network wrapped with
    :func:`engine.policies.module.wrap_policy`); another :class:`Policy` by its class."""
    from ..policies.cleanrl import CleanRLPolicy
    from ..policies.greydanus2017 import ActorCritic
    from ..policies.module import ModulePolicy
    from ..policies.sb3 import SB3Policy

    kinds = ((ActorCritic, "greydanus2017"), (SB3Policy, "sb3"), (CleanRLPolicy, "cleanrl"), (ModulePolicy, "module"))
    return next(
        (kind for cls, kind in kinds if isinstance(agent, cls)), f"{type(agent).__module__}.{type(agent).__name__}"
    )


def agent_settings(config: JobConfig, agent: Policy) -> dict:
    """``config.agent`` as the job used it, for the summary: the agent's kind and pipeline, and the core only where it
    applies (a 2017 agent's); ``preprocessing``, a 2017 agent's pipeline, is in ``pipeline``."""
    settings = {k: v for k, v in asdict(config.agent).items() if k not in ("core", "preprocessing")}
    kind = agent_kind(agent)
    settings["kind"] = kind
    if kind == "greydanus2017":
        settings["core"] = getattr(agent, "core", config.agent.core)
    settings["pipeline"] = agent.pipeline
    return settings


def zero_map_warnings(
    statistics: dict[str, float], methods: tuple[str, ...] = ("perturbation", "jacobian")
) -> list[str]:
    """What to say where every map of a method is zero (their maxima in ``statistics``): no perturbation, or no
    gradient, changed any output. Only the methods whose maps are never negative (the 2017 method, the Jacobian,
    SARFA) are judged so: a zero maximum of the others' signed maps does not mean zero maps."""
    said = []
    hints = {
        "perturbation": ("no perturbation changed any output", "saliency.radius, saliency.interp"),
        "jacobian": ("no output has a gradient with respect to the input", "saliency.method"),
        "sarfa": ("no perturbation lowered the most likely action's probability", "saliency.sarfa.*"),
    }
    for method, kinds in map_names(methods).items():
        if method not in hints:
            continue
        what, settings = hints[method]
        maxima = {k: statistics[f"{k}_max"] for k in kinds if f"{k}_max" in statistics}
        if maxima and all(v == 0 for v in maxima.values()):
            said.append(
                f"{what}: the {' and '.join(maxima)} maps are zero everywhere; the agent's outputs do not depend on "
                "its input (saturated units: check the checkpoint's weights) or the settings cannot show it "
                f"({settings})"
            )
    return said


def checkpoint_label(name: str) -> str:
    """A checkpoint as a label: a registry name as it is, a path by its file name."""
    return name if name.startswith(BUILTIN_PREFIX) or known_checkpoint(name) else Path(name).name


def checkpoint_labels(names: set[str]) -> dict[str, str]:
    """Each checkpoint's :func:`checkpoint_label`; files of one name in several folders (``runA/step_1000.pt``,
    ``runB/step_1000.pt``) by their paths below the folder they share.

    >>> sorted(checkpoint_labels({"/ck/runA/step_1.pt", "/ck/runB/step_1.pt", "/ck/runB/step_2.pt"}).values())
    ['runA/step_1.pt', 'runB/step_1.pt', 'step_2.pt']
    """
    labels = {name: checkpoint_label(name) for name in names}
    for label in {label for label in labels.values() if list(labels.values()).count(label) > 1}:
        same = [name for name in names if labels[name] == label]
        common = os.path.commonpath([os.path.abspath(name) for name in same])
        for name in same:
            labels[name] = os.path.relpath(os.path.abspath(name), common)
    return labels


def report_steps(
    requested, num_steps: int, maps: int = 2, page: str = "report.html"
) -> tuple[tuple[int, int], str | None]:
    """The steps ``(start, stop)`` a report of a run of ``num_steps`` shows (``maps`` maps a frame: the kinds of
    maps of every panel), and what to warn of: the run's first ``REPORT_MAX_MAPS // maps`` where ``requested``
    (``output.report_steps``) is None; ``requested`` where the run has them, its last steps as many as asked where
    it ended sooner. ``page``: the page's name in the warning.

    >>> report_steps(None, 500), report_steps([10, 20], 500)
    (((0, 500), None), ((10, 20), None))
    >>> report_steps(None, 25_000, maps=4)[0], report_steps([400, 600], 500)[0]
    ((0, 10000), (300, 500))
    """
    if requested is None:
        limit = max(1, REPORT_MAX_MAPS // max(1, maps))
        if num_steps <= limit:
            return (0, num_steps), None
        return (0, limit), (
            f"{page} shows the first {limit} of the run's {num_steps} steps ({maps} maps a frame: a longer page would "
            "not open in a browser): output.report_steps=[start,stop] shows others"
        )
    start, stop = (int(v) for v in requested)
    if stop <= num_steps:
        return (start, stop), None
    shown = (max(0, num_steps - (stop - start)), num_steps)
    return shown, (
        f"output.report_steps={[start, stop]}: the run ended after {num_steps} steps, so report.html shows steps "
        f"{shown[0]}..{shown[1] - 1}"
    )


def job_report(
    path: Path, config: JobConfig, settings: dict, rstore, sstore, steps: tuple[int, int] | None = None
) -> Path:
    """``report.html`` of a job (:func:`engine.viz.report.write_report`) showing ``steps`` (all by default),
    streamed from its complete stores one window of frames at a time."""
    from ..viz.report import write_report

    series = StoreSeries(rstore)
    shown = {k: v for k, v in settings.items() if k not in ("action_counts",)}
    # the values are those recorded with the game: its player's, where another checkpoint played it (store.player)
    played_by_agent = rstore.identity.get("checkpoint_sha256") == settings.get("checkpoint_sha256")
    return write_report(
        path,
        series.frames,
        store_maps(sstore, rstore.num_steps),
        values=series.values,
        actions=series.actions,
        rewards=series.rewards,
        dones=series.dones,
        action_names=series.action_names,
        title=f"{config.env.id}: {Path(str(settings['checkpoint'])).name}, {method_title(config)} saliency",
        settings=shown,
        checkpoint=str(settings["checkpoint"]),
        steps=steps,
        value_label="value" if played_by_agent else "value of the checkpoint that played the recorded game",
    )


def method_title(config: JobConfig) -> str:
    """The methods of a job in a title: ``perturbation``, ``both`` (perturbation and Jacobian), ``perturbation+rise``."""
    methods = selected_methods(config.saliency.method)
    return "both" if methods == ("perturbation", "jacobian") else "+".join(methods)


class StoreSeries:
    """A rollout store as the array-likes a report reads: ``frames``, ``values``, ``actions``, ``rewards``,
    ``dones`` (each ``x[a:b]`` reads steps a..b-1 through ``RolloutStore.read``; the last window is kept, so the
    five fields of one window cost one read), and ``action_names``."""

    def __init__(self, rstore: RolloutStore):
        from ..core.preprocessing import FRAME_SHAPE
        from ..viz.report import WindowedArray

        self.rstore = rstore
        self._last: tuple[tuple[int, int], Rollout] | None = None
        n = rstore.num_steps
        self.frames = WindowedArray(lambda a, b: self._window(a, b).frames, (n, *FRAME_SHAPE))

        def per_step(name: str) -> WindowedArray:
            return WindowedArray(lambda a, b: getattr(self._window(a, b), name), (n,))

        self.values, self.actions = per_step("values"), per_step("actions")
        self.rewards, self.dones = per_step("rewards"), per_step("dones")
        self.action_names = tuple(rstore.identity.get("action_names", ()))

    def _window(self, a: int, b: int) -> Rollout:
        if self._last is None or self._last[0] != (a, b):
            self._last = ((a, b), self.rstore.read(a, b))
        return self._last[1]


def store_maps(sstore, num_frames: int) -> dict[str, WindowedArray]:
    """The maps of a complete saliency store as array-likes (kind -> (T, H, W)) that read only the store chunks
    holding a window (through ``ChunkStore.read(k, keys)``, the call the statistics stream with too)."""
    from ..viz.report import MAP_KINDS, WindowedArray

    first = sstore.store.read(0)
    bounds = sstore.bounds

    def read(kind: str, a: int, b: int) -> np.ndarray:
        parts = [(lo, sstore.store.read(k, (kind,))[kind]) for k, (lo, hi) in enumerate(bounds) if lo < b and hi > a]
        joined = parts[0][1] if len(parts) == 1 else np.concatenate([part for _, part in parts])
        return joined[a - parts[0][0] : b - parts[0][0]]

    def reader(kind: str) -> Callable[[int, int], np.ndarray]:
        return lambda a, b: read(kind, a, b)

    return {
        kind: WindowedArray(reader(kind), (num_frames, *first[kind].shape[1:])) for kind in MAP_KINDS if kind in first
    }


def metrics_summary(config: JobConfig, agent: Policy):
    """The streaming accumulator of the job's faithfulness metrics (engine.metrics.faithfulness), or None when off."""
    m = config.metrics
    if not (m.deletion_insertion or m.objects or m.stability):
        return None
    from ..core.preprocessing import CROP_ROWS
    from ..metrics.faithfulness import MetricsSummary
    from ..metrics.regions import game_of

    game = game_of(config.env.id)
    if m.objects and game is None:
        log.warning(
            "metrics.objects: no object colours are known for %s (only Pong, Breakout, SpaceInvaders)", config.env.id
        )
    return MetricsSummary(
        kinds=list(m.kinds),
        steps=m.steps,
        deletion_insertion=m.deletion_insertion,
        random_baseline=m.random_baseline,
        objects=m.objects,
        stability=m.stability,
        game=game,
        rows=CROP_ROWS if (config.env.pipeline or agent.pipeline) == "greydanus2017" else None,
        distance=m.distance,
        seed=m.seed,
        curve_every=m.curve_every,
    )


def sanity_metrics(config: JobConfig, agent: Policy, observations, dones, actions) -> dict:
    """Cascading randomisation on ``metrics.sanity_frames`` frames evenly spaced over ``observations`` (the first
    ``metrics.sanity_window`` steps), the maps recomputed with the job's saliency settings."""
    from ..metrics.faithfulness import sanity_check

    m, s = config.metrics, engine_saliency(config.saliency)
    n = observations.shape[0]
    picks = torch.linspace(0, n - 1, min(m.sanity_frames, n)).round().long().unique()
    taken = torch.as_tensor(actions)[picks]

    def maps_fn(policy, obs, states):  # RISE masks and LIME samples seeded by each frame's index, as in the job
        maps = compute_saliency(policy, obs, states, s, actions=taken, frame_indices=picks)
        return {k: maps[k] for k in m.kinds if k in maps}

    result = sanity_check(agent, observations, maps_fn, dones=dones, frames=picks, seed=m.seed)
    return {**result.summary(), "frames": picks.tolist(), "stages": [list(stage) for stage in result.stages]}


def job_metrics(config: JobConfig, agent: Policy, rstore, sstore, recorded_states: bool) -> dict:
    """The metrics of a job (``metrics=...``) over its complete saliency store, streamed chunk by chunk from the
    rollout and saliency stores, on the states the maps were scored with (:func:`engine.jobs.score.scored_states`:
    the recorded ones, or the agent's replayed through the recorded game, carried across chunks). Kept after each
    chunk beside a store on disk (:mod:`engine.jobs.metrics_state`): an interrupted job goes on after them."""
    from .metrics_state import MetricsProgress

    out: dict = {}
    summary = metrics_summary(config, agent)
    if summary is not None:
        kinds = tuple(k for k in config.metrics.kinds if k in sstore.store.layout)
        chunks = list(range(len(sstore.bounds))) if kinds else []
        settings = {k: v for k, v in asdict(config.metrics).items() if not k.startswith("sanity")}
        progress = MetricsProgress(  # the device too: its rounding differs, and a resumed job's sums must not mix
            sstore, dict(metrics=settings, kinds=kinds, recorded_states=recorded_states, device=str(agent.device))
        )
        first = progress.resume(summary) if chunks else 0
        for k, part, states in scored_states(
            agent, rstore, sstore.bounds, config.saliency.state_alignment, recorded_states, chunks[first:]
        ):
            maps = {key: torch.from_numpy(v) for key, v in sstore.store.read(k, kinds).items()}
            start = sstore.bounds[k][0]
            summary.update(agent, part.observations, states, maps, part.actions, part.frames, part.dones, start)
            progress.added(k, summary)
        out.update(summary.result())
    if config.metrics.sanity:
        recorded = rstore.read(0, min(rstore.num_steps, config.metrics.sanity_window))
        out["sanity"] = sanity_metrics(config, agent, recorded.observations, recorded.dones, recorded.actions)
    return out


def action_counts(actions, names) -> dict[str, int]:
    """How often each action was taken, by name (for the summary)."""
    counts = torch.bincount(torch.as_tensor(actions).long(), minlength=len(names)).tolist()
    return {name: int(c) for name, c in zip(names, counts)}


def episode_returns(rewards, dones) -> list[float]:
    """Total reward of every episode that ended in the recording (for the summary)."""
    ends = np.flatnonzero(dones)
    return np.diff(np.cumsum(np.asarray(rewards, dtype=np.float64))[ends], prepend=0.0).tolist()


def _write_summary(out_dir: Path, settings: dict, written: dict[str, Path | str]) -> dict[str, Path | str]:
    summary = out_dir / "summary.json"
    with atomic_write(summary) as tmp:  # an interrupted write leaves the earlier summary, never half of one
        tmp.write_text(
            json.dumps({**settings, "written": {k: str(v) for k, v in written.items()}}, indent=2, default=str)
        )
    return {**written, "summary": summary}


# settings that tell the jobs of a sweep apart on the sweep page (those that differ label each job's panel)
_SWEPT_COLUMNS = ("checkpoint", "method", "radius", "density", "interp", "compat", "state_alignment")


def sweep_report(sweep_dir: Path, rows: list[dict], columns, steps: list[int] | None = None) -> Path:
    """``report.html`` of a multirun in ``sweep_dir`` (``rows``: summary.csv's rows, ``columns`` its header;
    ``steps``: ``output.report_steps``, the steps shown as in :func:`report_steps`).

    Jobs that replayed one recorded game (the same ``store.rollout``, each saliency store complete) are shown side
    by side on the same frame, one panel per saliency store (shards of one store are one panel), labelled by the
    settings that differ; otherwise the page has the sortable table and links to each job's ``report.html``."""
    from ..viz.report import Panel, write_sweep_report

    sweep_dir = Path(sweep_dir)
    reports = {row["job"]: Path(row.get("output_dir") or sweep_dir / row["job"]) / "report.html" for row in rows}
    links = {job: os.path.relpath(page, sweep_dir) for job, page in reports.items() if page.is_file()}
    summaries = {row["job"]: json.loads((sweep_dir / row["job"] / "summary.json").read_text()) for row in rows}
    games = {s.get("rollout_store") for s in summaries.values()}
    path = sweep_dir / "report.html"
    # complete as summary.csv says (a shard finished before its store was complete has its row from the one after)
    shared = len(games) == 1 and None not in games and rows and all(row.get("complete") for row in rows)
    many = any("games" in s for s in summaries.values())  # rollout.num_envs: each game's page in its job's folder
    if many or not shared:
        log.info(
            "sweep report: %s; table and links only",
            "the jobs played many games each (rollout.num_envs: each game's page is in its job's folder)"
            if many
            else "the jobs did not all replay one complete recorded game",
        )
        return write_sweep_report(path, rows, columns, links=links, title=f"sweep {sweep_dir.name}: {len(rows)} jobs")
    settings = [*_SWEPT_COLUMNS, *(c for c in columns if "." in c)]  # summary_rows' columns of settings that differ
    swept = [c for c in settings if len({str(row.get(c)) for row in rows}) > 1]
    labels = checkpoint_labels({str(row["checkpoint"]) for row in rows})
    rstore = RolloutStore.open(next(iter(games)))
    recorded = StoreSeries(rstore)
    panels: list[Panel] = []
    seen: dict[str, Panel] = {}  # saliency store -> its panel
    for row in rows:
        store = summaries[row["job"]]["saliency_store"]
        if store in seen:  # another shard of a store already shown
            seen[store].label += f", {row['job']}"
            continue
        label = f"job {row['job']}: " + (
            ", ".join(f"{c}={labels[str(row[c])] if c == 'checkpoint' else row[c]}" for c in swept) or "same settings"
        )
        seen[store] = Panel(
            row["job"], store_maps(SaliencyStore.open(store), rstore.num_steps), label=label, link=links.get(row["job"])
        )
        panels.append(seen[store])
    maps = sum(len(panel.maps) for panel in panels)
    shown, warning = report_steps(steps, rstore.num_steps, maps, "the sweep's report.html")
    if warning:
        log.warning("%s (set once for the whole sweep: a swept value sets each job's own page)", warning)
    return write_sweep_report(
        path,
        rows,
        columns,
        frames=recorded.frames,
        panels=panels,
        values=recorded.values,
        actions=recorded.actions,
        rewards=recorded.rewards,
        dones=recorded.dones,
        action_names=recorded.action_names,
        links=links,
        title=f"sweep {sweep_dir.name}: {len(panels)} jobs on one recorded game of {rstore.identity['env_id']}",
        settings={"rollout_store": next(iter(games)), "swept": swept},
        steps=shown,
    )
