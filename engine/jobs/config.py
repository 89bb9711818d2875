"""The typed configuration of a job: the one source of its defaults.

The dataclasses below are the schema of ``configs/main.yaml``: :func:`register_configs` puts
:class:`JobConfig` into Hydra's ConfigStore as ``job_schema``, the first entry of main.yaml's defaults list, so
every group file is merged into (and checked against) these types and the YAML holds only what differs from
them. Choices are string enums (OmegaConf rejects ``Literal``); a plain string compares equal to its member.

:func:`check_config` checks ranges, NaN and the settings that depend on each other right after composition,
before anything is loaded or played. :meth:`JobConfig.from_dict` builds a checked config from a nested dict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..core.errors import EngineError
from ..core.settings import (
    MAP_KINDS,
    PIPELINES,
    SIZE,
    Compat,
    Incremental,
    Interp,
    JacobianBackend,
    LimeSettings,
    Method,
    OcclusionSettings,
    Precision,
    RiseSettings,
    SaliencyConfig,
    SarfaSettings,
    Score,
    StateAlignment,
    check_passes_settings,
    map_names,
    selected_methods,
    validate_method_settings,
    validate_settings,
)

__all__ = [
    "AgentConfig",
    "AgentKind",
    "Compat",
    "Core",
    "DType",
    "Device",
    "EnvConfig",
    "Incremental",
    "Interp",
    "JobConfig",
    "LimeSettings",
    "Method",
    "MetricsConfig",
    "OcclusionSettings",
    "OutputConfig",
    "REMOVED",
    "RENAMED",
    "RenderConfig",
    "RenderStyle",
    "RiseSettings",
    "RolloutConfig",
    "SaliencyConfig",
    "SarfaSettings",
    "StateAlignment",
    "StoreConfig",
    "bundled_envs",
    "check_config",
    "config_dir",
    "config_error",
    "engine_saliency",
    "register_configs",
]

# Options that were renamed: the old key (as written in an override or a YAML file) -> the new one.
RENAMED = {
    "saliency.chunk_size": "saliency.perturbations_per_eval",
}
# settings that did nothing and were removed: why, and what to set instead
REMOVED = {
    "agent.preprocessing": "every agent plays in its own kind's pipeline (a 2017 agent's: greydanus2017); "
    "env.pipeline chooses another",
}


class Core(StrEnum):
    auto = "auto"  # inferred from the checkpoint
    gru = "gru"
    lstm = "lstm"


class AgentKind(StrEnum):
    auto = "auto"  # recognised from the file (engine.policies.loading)
    greydanus2017 = "greydanus2017"  # the 2017 paper's and baby-a3c's actor-critic state dicts
    sb3 = "sb3"  # a Stable-Baselines3 / sb3-contrib zip (PPO, A2C, DQN, QRDQN, RecurrentPPO)
    cleanrl = "cleanrl"  # a CleanRL ppo_atari / ppo_atari_lstm / dqn_atari state dict


class RenderStyle(StrEnum):
    paper = "paper"  # the paper's overlay: actor blue, critic red, per-frame byte-scaled maps
    clean = "clean"  # a perceptual colormap with alpha, normalised once per movie


class Device(StrEnum):
    auto = "auto"  # CUDA when present, else the CPU (pick a GPU with CUDA_VISIBLE_DEVICES)
    cpu = "cpu"
    cuda = "cuda"


class DType(StrEnum):
    # the dtypes whose maps can be saved as they are (npz has no bfloat16); float16 has too little range
    float32 = "float32"
    float64 = "float64"


@dataclass
class EnvConfig:
    """The game, played in the agent's own environment pipeline (the agent declares which)."""

    id: str = "Pong-v4"  # any gymnasium ALE id: Pong-v4, Breakout-v4, BreakoutNoFrameskip-v4, ALE/SpaceInvaders-v5, ...
    repeat_action_probability: float | None = None  # sticky actions; None: the id's default (0 for v4, 0.25 for v5)
    full_action_space: bool = False  # all 18 ALE actions instead of the game's minimal set
    pipeline: str | None = None  # another supported pipeline to play the agent in (a warning says so); null: its own
    training_wrappers: bool = False  # the library's training wrappers (episodic life, clipped rewards) instead
    # of full games with real scores (SB3 and CleanRL pipelines)


@dataclass
class AgentConfig:
    """The agent of the main job: by default the strongest built-in one, shipped in the package (no download)."""

    checkpoint: str = "builtin/pong_ppo"  # a file path, or a registry name (engine.policies.registry)
    checkpoint_dirs: list[str] = field(default_factory=list)  # local directories searched for registry names
    cache_dir: str | None = None  # download cache (default ~/.cache/atari-saliency/checkpoints)
    allow_download: bool = False
    kind: AgentKind = AgentKind.auto  # the file's format; auto recognises it
    core: Core = Core.auto  # 2017 agents: the core the checkpoint must hold (lstm, gru); auto: whatever it holds


@dataclass
class RolloutConfig:
    steps: int = 200  # frames played and scored
    seed: int = 0  # seeds the environment and the action sampler
    greedy: bool = False  # argmax actions instead of sampling
    max_episodes: int | None = None  # stop after this many episodes (None: play all the steps); per game with num_envs
    num_envs: int | None = None  # N games played together (game i seeded seed + i), each recorded and scored as its
    # own game (one store group and output folder game_000i per game); steps and max_episodes are per game.
    # None: one game, as before
    workers: int = 0  # with num_envs: processes that step the games' emulators (0: this process; at most num_envs);
    # the games are the same bit for bit with any number


@dataclass
class RenderConfig:
    style: RenderStyle = RenderStyle.paper
    actor_gain: float | None = None  # paper style: None = the paper's gain for the game
    critic_gain: float | None = None
    blur_sigma: float = 0.0  # paper style: extra blur of the 160x160 map
    percentile: float = 99.5  # clean style: one normalisation per movie, at this percentile
    alpha: float = 0.6  # clean style: opacity of the strongest saliency


@dataclass
class OutputConfig:
    dir: str = "."  # the Hydra app writes into its run directory (configs/output/default.yaml)
    movie: bool = True
    fps: int = 8
    scale: int = 2  # integer upscaling of movie frames
    stills: list[int] = field(default_factory=list)  # frame indices written as PNG
    comparison: bool = True  # the "Jacobian vs perturbation" figure of one frame (a Jacobian pass of its own)
    comparison_frame: int | None = None  # the figure's frame (None: the middle one)
    arrays: bool = True  # rollout.npz and saliency.npz, with the settings that produced them
    report: bool = True  # report.html: a self-contained viewer of the run (engine.viz.report); a sweep's too
    # [start, stop]: the steps report.html shows (a page holds 0.5-3.3 kB a frame per map shown). Default: the whole
    # run up to engine.jobs.outputs.REPORT_MAX_MAPS maps (10,000 frames of 4 kinds of maps); its first steps beyond
    report_steps: list[int] | None = None


@dataclass
class StoreConfig:
    """Stores on disk for long rollouts and sweeps (engine.storage.store): resumable, shardable, replayed by other
    jobs. While ``rollout`` is None the job's stores are in memory: only ``chunk_steps`` and ``frames_per_chunk``
    apply."""

    rollout: str | None = None  # rollout store directory: recorded (resumed) there if incomplete, replayed if complete
    saliency: str | None = None  # saliency store directory (default: <output.dir>/saliency_store)
    player: str | None = None  # checkpoint that plays the recorded game (default: the job's agent); set it in
    # checkpoint sweeps so that parallel jobs agree on who records
    chunk_steps: int = 256  # steps per rollout chunk
    frames_per_chunk: int = 64  # frames per saliency chunk (the memory bound and the unit of resume)
    shard: int = 0
    num_shards: int = 1
    overlap: bool | None = None  # score saliency chunks while later rollout chunks are recorded (docs/stores.md);
    # null: where the agent runs on CUDA (on a CPU both stages share the cores, and overlap measured slower there)


@dataclass
class MetricsConfig:
    """Faithfulness metrics of the job's maps (engine.metrics.faithfulness), added to summary.json and the sweep's
    summary.csv; all off by default (configs/metrics/: none, faithfulness, sanity)."""

    deletion_insertion: bool = False  # deletion/insertion curves and AUCs (policy probability, KL, value)
    random_baseline: bool = True  # with deletion_insertion: the same curves for random-order maps (reference)
    steps: int = 32  # deletion/insertion steps K
    curve_every: int = 1  # deletion/insertion on every n-th frame only (2 K passes a frame: long rollouts)
    objects: bool = False  # share of saliency on the game's objects, pointing game (Pong, Breakout, SpaceInvaders)
    distance: float = 4.0  # object cells: within this many frame pixels of an object
    stability: bool = False  # Spearman of consecutive frames' maps
    sanity: bool = False  # cascading randomisation of the agent's layers (maps recomputed per stage)
    sanity_frames: int = 4  # frames (evenly spaced in the first sanity_window steps) whose maps are recomputed
    sanity_window: int = 256  # steps replayed through each randomised agent
    kinds: list[str] = field(default_factory=lambda: ["actor", "critic"])  # which maps are scored
    seed: int = 0


@dataclass
class JobConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    device: Device = Device.auto
    dtype: DType = DType.float32
    progress: bool = True  # progress bars where the output is a terminal (tqdm decides); false: never

    @classmethod
    def from_dict(cls, data: dict | None) -> JobConfig:
        """A checked config from a nested dict (what ``OmegaConf.to_container`` gives): unknown or renamed keys,
        wrong types and out-of-range values raise :class:`EngineError` with one line naming the key."""
        try:
            merged = OmegaConf.merge(OmegaConf.structured(cls), data or {})
            config = cast("JobConfig", OmegaConf.to_object(merged))  # a structured config converts to its dataclass
        except OmegaConfBaseException as exc:
            raise EngineError(config_error(exc)) from None
        # a quoted '~/runs' is the home folder, as a shell would read it unquoted (agent.checkpoint does the same)
        config.output.dir = os.path.expanduser(config.output.dir)
        config.store.rollout = _home(config.store.rollout)
        config.store.saliency = _home(config.store.saliency)
        check_config(config)
        return config


def _home(path: str | None) -> str | None:
    """``path`` with a leading ``~`` expanded (not a URL: ``s3://...`` is left as it is)."""
    return os.path.expanduser(path) if isinstance(path, str) and path.startswith("~") else path


def config_dir() -> Path:
    """The configs that ship with the engine: ``engine/configs`` of an installed wheel, else the checkout's top-level
    ``configs/``."""
    package = Path(__file__).resolve().parents[1]
    shipped = package / "configs"
    return shipped if (shipped / "main.yaml").is_file() else package.parent / "configs"


def bundled_envs() -> dict[str, str]:
    """``{option: environment id}`` of the bundled environment configs (``configs/env/<option>.yaml``, chosen on the
    command line as ``env=<option>``)."""
    found = {}
    for path in sorted((config_dir() / "env").glob("*.yaml")):
        try:
            env_id = OmegaConf.select(OmegaConf.load(path), "id")
        except (OSError, OmegaConfBaseException):
            continue
        if isinstance(env_id, str) and env_id:
            found[path.stem] = env_id
    return found


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (``job_schema``, named first in main.yaml's defaults)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="job_schema", node=JobConfig)


def config_error(exc: BaseException) -> str:
    """One line for a composition or validation error of OmegaConf/Hydra, naming the key (and a renamed key's
    new name)."""
    key = getattr(exc, "full_key", None)
    if key in RENAMED:
        return f"{key} was renamed: use {RENAMED[key]}"
    if key in REMOVED:
        return f"{key} was removed: {REMOVED[key]}"
    text = str(exc)
    for old, new in RENAMED.items():
        leaf, parent = old.rsplit(".", 1)[1], old.rsplit(".", 1)[0]
        if f"'{leaf}'" in text and (key == old or parent in text or old in text):
            return f"{old} was renamed: use {new}"
    message = getattr(exc, "msg", None) or text
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    # drop OmegaConf's context lines (full_key:, object_type=, reference_type=) and Hydra's "In 'x': ... raised"
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type", "reference_type"))]
    lines = [line for line in lines if not (line.startswith("In '") and "raised while composing" in line)] or lines
    text = " ".join(lines) if lines else type(exc).__name__
    if key and key not in text:
        text = f"{key}: {text}"
    if key and re.search(r"Key '[^']*' not in '", text):
        text += f" ({close_key(key, getattr(exc, 'object_type', None))}--cfg job prints every key)"
    return text


def close_key(key: str, schema: object) -> str:
    """``did you mean <key>? `` for the field of ``schema`` (the dataclass that lacks ``key``'s last part) whose name
    is closest to a misspelled ``key``, or ``""``."""
    import difflib

    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return ""
    *parents, leaf = key.split(".")
    close = difflib.get_close_matches(leaf, [f.name for f in dataclasses.fields(schema)], n=1)
    return f"did you mean {'.'.join([*parents, close[0]])}? " if close else ""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise EngineError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_positive(value) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def _registry_kind(checkpoint: str) -> str | None:
    """The agent kind behind a registry name (baby-a3c's are 2017 agents; a built-in series says in its metadata's
    ``agent`` field, e.g. "cleanrl ppo_atari_lstm"), None for a file path. Reads small JSON files only."""
    if checkpoint.startswith("baby-a3c/"):
        return "greydanus2017"
    if not checkpoint.startswith("builtin/"):
        return None
    folder = Path(__file__).resolve().parents[1] / "agents" / checkpoint.removeprefix("builtin/").split("@")[0]
    meta = next(iter(sorted(folder.glob("step_*.json"))), None) if folder.is_dir() else None
    agent = json.loads(meta.read_text()).get("agent", "") if meta else ""
    return agent.split()[0] if agent else "greydanus2017"


def check_config(config: JobConfig) -> None:
    """Raise :class:`EngineError` (one line, naming the key) at the first setting out of range; cheap: nothing
    is loaded. ``engine.jobs.run.validate_job`` adds the checks that need the environment and the agent."""
    s, r, o, st, rend = config.saliency, config.rollout, config.output, config.store, config.render
    try:
        selected_methods(s.method)
    except ValueError as exc:
        raise EngineError(f"saliency.{exc}") from None
    for name, enum in (
        ("interp", Interp),
        ("compat", Compat),
        ("state_alignment", StateAlignment),
        ("incremental", Incremental),
        ("jacobian_backend", JacobianBackend),
        ("score", Score),
        ("precision", Precision),
    ):
        value = getattr(s, name)
        _check(value in tuple(enum), f"saliency.{name} must be one of {', '.join(enum)}, got {value!r}")
    _check(config.device in tuple(Device), f"device must be one of {', '.join(Device)}, got {config.device!r}")
    _check(config.dtype in tuple(DType), f"dtype must be one of {', '.join(DType)}, got {config.dtype!r}")
    _check(
        rend.style in tuple(RenderStyle), f"render.style must be one of {', '.join(RenderStyle)}, got {rend.style!r}"
    )
    _check(config.agent.core in tuple(Core), f"agent.core must be one of {', '.join(Core)}, got {config.agent.core!r}")
    _check(
        config.agent.kind in tuple(AgentKind),
        f"agent.kind must be one of {', '.join(AgentKind)}, got {config.agent.kind!r}",
    )
    named = _registry_kind(config.agent.checkpoint)
    _check(
        config.agent.kind in ("auto", "greydanus2017") or named in (None, config.agent.kind),
        f"agent.kind={config.agent.kind} needs the file its library wrote: set agent.checkpoint=/path/to/the/file "
        f"(now {config.agent.checkpoint!r}, the registry name of a {named} agent)",
    )
    _check(
        config.env.pipeline is None or config.env.pipeline in PIPELINES,
        f"env.pipeline must be one of {', '.join(PIPELINES)} (or null: the agent's own), got {config.env.pipeline!r}",
    )
    rap = config.env.repeat_action_probability
    _check(
        rap is None or (_is_number(rap) and 0 <= rap <= 1),
        f"env.repeat_action_probability must be in [0, 1] (or null: the id's default), got {rap!r}",
    )
    _check(bool(config.env.id), "env.id must name an ALE game, e.g. Pong-v4")
    _check(bool(config.agent.checkpoint), "agent.checkpoint must name a checkpoint file or a registry name")

    # saliency
    try:
        validate_settings(s.radius, s.density, str(s.interp), s.blur_sigma, str(s.compat), size=None)
    except ValueError as exc:
        raise EngineError(f"saliency.{exc}") from None
    try:
        validate_method_settings(s)  # the checks that need the observation's size wait for the agent (validate_job)
    except ValueError as exc:
        raise EngineError(f"saliency.{exc}") from None
    ppe = s.perturbations_per_eval
    _check(
        ppe is None or (_is_int(ppe) and ppe >= 1),
        f"saliency.perturbations_per_eval must be >= 1 (or null: the device default), got {ppe!r}",
    )
    budget = s.memory_budget_mb
    _check(
        budget is None or _finite_positive(budget),
        f"saliency.memory_budget_mb must be a finite number of megabytes > 0 (or null), got {budget!r}",
    )
    _check(
        _is_int(s.frames_per_batch) and s.frames_per_batch >= 1,
        f"saliency.frames_per_batch must be >= 1, got {s.frames_per_batch!r}",
    )
    try:
        check_passes_settings(s, prefix="saliency.")
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    # settings fast precision can never serve (an agent without a delta form is only known once loaded)
    if s.precision == "fast":
        _check(
            not s.compile,
            "saliency.precision=fast and saliency.compile=true cannot run together (compilation is for the exact "
            "path): choose one",
        )
        _check(
            s.score == "logit_l2",
            f"saliency.precision=fast gives the logit_l2 score only, got saliency.score={s.score}: use "
            "saliency.precision=exact for it",
        )

    # rollout
    _check(_is_int(r.steps) and r.steps >= 1, f"rollout.steps must be >= 1, got {r.steps!r}")
    _check(_is_int(r.seed) and 0 <= r.seed < 2**32, f"rollout.seed must be in 0..2**32-1, got {r.seed!r}")
    _check(
        r.max_episodes is None or (_is_int(r.max_episodes) and r.max_episodes >= 1),
        f"rollout.max_episodes must be >= 1 (or null: play all rollout.steps), got {r.max_episodes!r}",
    )
    _check(
        r.num_envs is None or (_is_int(r.num_envs) and r.num_envs >= 1),
        f"rollout.num_envs must be an integer >= 1 (games played together; or null: one game), got {r.num_envs!r}",
    )
    _check(
        _is_int(r.workers)
        and 0 <= r.workers
        and (r.workers == 0 or (r.num_envs is not None and r.workers <= r.num_envs)),
        f"rollout.workers must be an integer from 0 to rollout.num_envs (processes stepping the games; 0: this one), "
        f"and needs rollout.num_envs; got workers={r.workers!r}, num_envs={r.num_envs!r}",
    )
    _check(
        r.num_envs is None or r.seed + r.num_envs - 1 < 2**32,
        f"rollout.seed + rollout.num_envs - 1 (the last game's seed) must be < 2**32, got {r.seed} + {r.num_envs} - 1",
    )

    # render
    for name in ("actor_gain", "critic_gain"):
        gain = getattr(rend, name)
        _check(
            gain is None or _finite_positive(gain), f"render.{name} must be a finite number > 0 (or null), got {gain!r}"
        )
    _check(
        _is_number(rend.blur_sigma) and math.isfinite(rend.blur_sigma) and 0 <= rend.blur_sigma <= 2 * SIZE,
        f"render.blur_sigma must be in 0..{2 * SIZE}, got {rend.blur_sigma!r}",
    )
    _check(
        _is_number(rend.percentile) and 0 < rend.percentile <= 100,
        f"render.percentile must be in (0, 100], got {rend.percentile!r}",
    )
    _check(_is_number(rend.alpha) and 0 <= rend.alpha <= 1, f"render.alpha must be in 0..1, got {rend.alpha!r}")

    # output
    _check(_is_int(o.fps) and 1 <= o.fps <= 240, f"output.fps must be in 1..240, got {o.fps!r}")
    _check(_is_int(o.scale) and 1 <= o.scale <= 16, f"output.scale must be in 1..16, got {o.scale!r}")
    _check(bool(o.dir), "output.dir must name a directory")
    last = r.steps - 1
    for index in o.stills:
        _check(
            _is_int(index) and 0 <= index <= last, f"output.stills: frame {index!r} is outside the rollout's 0..{last}"
        )
    if o.report_steps is not None:
        steps = list(o.report_steps)
        _check(
            len(steps) == 2 and all(_is_int(v) for v in steps) and 0 <= steps[0] < steps[1] <= r.steps,
            f"output.report_steps must be [start, stop] with 0 <= start < stop <= rollout.steps ({r.steps}), got "
            f"{o.report_steps!r}",
        )
    if o.comparison_frame is not None:
        _check(
            o.comparison,
            f"output.comparison_frame={o.comparison_frame} asks for the figure that output.comparison=false turns off: "
            "drop one of them",
        )
        _check(
            _is_int(o.comparison_frame) and 0 <= o.comparison_frame <= last,
            f"output.comparison_frame {o.comparison_frame!r} is outside the rollout's 0..{last}",
        )

    # metrics
    m = config.metrics
    _check(
        _is_int(m.steps) and 1 <= m.steps <= 4096,
        f"metrics.steps must be in 1..4096 (deletion/insertion steps), got {m.steps!r}",
    )
    _check(
        _is_int(m.curve_every) and m.curve_every >= 1,
        f"metrics.curve_every must be an integer >= 1 (1: the curves of every frame), got {m.curve_every!r}",
    )
    _check(
        _is_int(m.sanity_frames) and m.sanity_frames >= 1,
        f"metrics.sanity_frames must be >= 1, got {m.sanity_frames!r}",
    )
    _check(
        _is_int(m.sanity_window) and m.sanity_window >= 1,
        f"metrics.sanity_window must be >= 1, got {m.sanity_window!r}",
    )
    _check(
        _is_number(m.distance) and math.isfinite(m.distance) and m.distance >= 0,
        f"metrics.distance must be a finite number of pixels >= 0, got {m.distance!r}",
    )
    known = MAP_KINDS
    _check(
        all(k in known for k in m.kinds), f"metrics.kinds must name maps among {', '.join(known)}, got {list(m.kinds)}"
    )
    if m.deletion_insertion or m.objects or m.stability or m.sanity:  # metrics of maps the job does not make: none
        methods = selected_methods(s.method)
        given = [k for names in map_names(methods).values() for k in names]
        missing = [k for k in m.kinds if k not in given]
        _check(
            not missing,
            f"metrics.kinds names maps that saliency.method={','.join(methods)} does not make: {', '.join(missing)} "
            f"(it makes {', '.join(given)}): set metrics.kinds=[{','.join(given)}] or a part of it",
        )

    # store
    _check(_is_int(st.chunk_steps) and st.chunk_steps >= 1, f"store.chunk_steps must be >= 1, got {st.chunk_steps!r}")
    _check(
        _is_int(st.frames_per_chunk) and st.frames_per_chunk >= 1,
        f"store.frames_per_chunk must be >= 1, got {st.frames_per_chunk!r}",
    )
    _check(_is_int(st.num_shards) and st.num_shards >= 1, f"store.num_shards must be >= 1, got {st.num_shards!r}")
    _check(
        _is_int(st.shard) and 0 <= st.shard < st.num_shards,
        f"store.shard must be in 0..store.num_shards-1, got shard={st.shard} num_shards={st.num_shards}",
    )
    _check(
        not (st.rollout and r.max_episodes is not None),
        "rollout.max_episodes does not apply to a rollout store (it records rollout.steps steps): unset it",
    )
    _check(  # an in-memory job plays its own game: another process cannot score the other shards of its stores
        bool(st.rollout) or st.num_shards == 1,
        f"store.num_shards={st.num_shards} needs store.rollout (shards fill one saliency store of one recorded game): "
        "set store.rollout to a path, or leave store.shard and store.num_shards unset",
    )
    _check(  # without a store each job plays its own game with its own agent: the player would be ignored
        bool(st.rollout) or not st.player,
        f"store.player={st.player} records the game into store.rollout, which is not set: set store.rollout=<dir> "
        "(every job of a sweep then replays that one game), or leave store.player unset",
    )


def engine_saliency(s: SaliencyConfig) -> SaliencyConfig:
    """The saliency settings as the engine functions take them: plain strings (in the methods' own settings too),
    ``method`` a name or a list of names, and ``incremental`` as True, False or "auto" (what the stores record in
    their manifests)."""

    def plain(value):
        if isinstance(value, Incremental):
            return value.setting
        if isinstance(value, StrEnum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return type(value)(**{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return value

    return cast(SaliencyConfig, plain(s))
