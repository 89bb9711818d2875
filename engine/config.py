"""The typed configuration of a job: plain dataclasses the Hydra app fills in (the engine never imports Hydra).

``JobConfig.from_dict`` builds one from a nested dict (what ``OmegaConf.to_container`` gives), rejecting
unknown keys and wrong types with a message that names the key, so a typo in an override fails at once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

from .errors import EngineError


@dataclass
class EnvConfig:
    id: str = "Pong-v4"  # any gymnasium ALE id: Pong-v4, Breakout-v4, ALE/SpaceInvaders-v5, ...


@dataclass
class AgentConfig:
    checkpoint: str = "baby-a3c/pong"  # a file path, or a registry name (engine.registry)
    checkpoint_dirs: list[str] = field(default_factory=list)  # local directories searched for registry names
    cache_dir: str | None = None  # download cache (default ~/.cache/atari-saliency/checkpoints)
    allow_download: bool = True
    core: str = "auto"  # "auto" (inferred from the checkpoint), or "gru"/"lstm" to insist on one
    preprocessing: str = "greydanus2017"  # the only preprocessing the published agents know


@dataclass
class RolloutConfig:
    steps: int = 200
    seed: int = 0
    greedy: bool = False
    max_episodes: int | None = None


@dataclass
class SaliencyConfig:
    method: str = "perturbation"  # perturbation | jacobian | both
    radius: float = 5
    density: int = 5
    interp: str = "occlude"
    blur_sigma: float = 3
    compat: str = "exact"  # exact | paper (byte-scaled upsampling with the zero row/column)
    state_alignment: str = "exact"  # exact | paper (the original's off-by-one state)
    chunk_size: int | None = None
    memory_budget_mb: float | None = None
    incremental: typing.Any = "auto"  # True | False | "auto"
    frames_per_batch: int = 32  # frames scored together (progress and memory granularity)


@dataclass
class RenderConfig:
    style: str = "paper"  # paper | clean
    actor_gain: float | None = None  # paper style: None = the paper's gain for the game
    critic_gain: float | None = None
    blur_sigma: float = 0.0  # paper style: extra blur of the 160x160 map
    percentile: float = 99.5  # clean style: one normalisation per movie, at this percentile
    alpha: float = 0.6  # clean style: opacity of the strongest saliency


@dataclass
class OutputConfig:
    dir: str = "."
    movie: bool = True
    fps: int = 8
    scale: int = 2  # integer upscaling of movie frames
    stills: list[int] = field(default_factory=list)  # frame indices written as PNG
    comparison_frame: int | None = None  # frame of the "Jacobian vs perturbation" figure (None: the middle one)
    arrays: bool = True


@dataclass
class StoreConfig:
    """Streaming mode for long rollouts and sweeps (engine.store); off while ``rollout`` is None."""

    rollout: str | None = None  # rollout store directory: recorded (resumed) there if incomplete, replayed if complete
    saliency: str | None = None  # saliency store directory (default: <output.dir>/saliency_store)
    player: str | None = None  # checkpoint that plays the recorded game (default: the job's agent); set it in
    # checkpoint sweeps so that parallel jobs agree on who records
    chunk_steps: int = 256  # steps per rollout chunk
    frames_per_chunk: int = 64  # frames per saliency chunk (the memory bound and the unit of resume)
    shard: int = 0
    num_shards: int = 1


@dataclass
class JobConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    device: str = "auto"
    dtype: str = "float32"
    progress: bool = True

    @classmethod
    def from_dict(cls, data: dict) -> "JobConfig":
        return _build(cls, data, "")


def _check_type(value, annotation, key: str):
    if annotation is typing.Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except EngineError as exc:
                errors.append(str(exc))
        raise EngineError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise EngineError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (not isinstance(value, annotation) or (annotation is int and isinstance(value, bool))):
        raise EngineError(f"{key} must be {annotation.__name__}, got {value!r}")
    return value


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EngineError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise EngineError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {sorted(names)}")
    values = {}
    for name in names & set(data):
        annotation, key = hints[name], prefix + name
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, data[name], key + ".")
        else:
            values[name] = _check_type(data[name], annotation, key)
    return cls(**values)
